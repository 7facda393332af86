# benchmark scripts (programs are registered by each layer)
