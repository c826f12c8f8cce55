"""Authentication and authorisation: API keys and JWTs, roles per RPC, the failed-attempt limiter, the layer."""
