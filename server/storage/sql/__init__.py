"""The L2 stores: PostgreSQL and SQLite, the pure planners both follow, and the migrations."""
