# text tests: registered by the text layer
