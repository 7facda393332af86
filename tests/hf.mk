# hf/safetensors tests
