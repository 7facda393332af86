# kernels tests: registered by the kernels layer
