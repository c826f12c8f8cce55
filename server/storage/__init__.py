"""Storage: the policy at this level, the Redis tier in redis/, the SQL stores in sql/.

Where to look:
- a promise (seq order, idempotency, degradation, repairs): repository.py, tiers.py, storewrite.py,
  preferences.py, erasure.py; what each consumer needs from a store: protocols.py;
- a Redis key: redis/keys.py; a Lua script: redis/scripts.py; the flusher: redis/outbox.py;
- a SQL statement: sql/postgres/<concern>.py or sql/sqlite/<concern>.py; the rules both stores follow
  (seq planning, flush planning): sql/planner.py; schema: sql/migrations/<dialect>/;
- the bytes a message is stored as in every tier: codec.py.
"""
