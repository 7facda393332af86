# engine tests: registered by the engine layer
