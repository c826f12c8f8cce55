"""Integration tests against real redis-server and PostgreSQL processes."""
