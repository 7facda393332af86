# model tests: registered by the model layer
