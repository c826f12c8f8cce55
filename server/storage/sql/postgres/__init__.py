"""The durable store on PostgreSQL (asyncpg): one module per concern, composed in store.py."""
