"""chatmem server: a gRPC memory service for AI agents, with Redis (L1) over PostgreSQL or SQLite (L2)."""
