-- Repairs and their fence per bucket (the Redis slot group of a thread or user), so that a Redis Cluster
-- master that is down degrades and repairs only its buckets. A write around Redis checks its bucket's
-- epoch under a shared row lock; a replica that starts using Redis again after an outage bumps it first,
-- so a write around Redis by a replica that still cannot reach it fails instead of racing the cache.
ALTER TABLE cache_repairs ADD COLUMN bucket integer NOT NULL DEFAULT -1;  -- -1: recorded before 0006
CREATE INDEX cache_repairs_bucket ON cache_repairs (bucket, create_time);

CREATE TABLE cache_epochs (
    bucket integer PRIMARY KEY,
    epoch  bigint  NOT NULL
);
INSERT INTO cache_epochs (bucket, epoch) SELECT b, 0 FROM generate_series(0, 255) AS b;
