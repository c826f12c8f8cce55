"""chatmem: the Python client of the chatmem gRPC memory server; ``chatmem.v1`` holds the generated stubs."""
