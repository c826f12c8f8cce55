"""Storage: the Protocols, the Redis cache (L1), the durable stores (L2) and the consistency policy."""
