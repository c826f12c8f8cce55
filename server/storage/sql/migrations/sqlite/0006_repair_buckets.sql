-- Repairs and their fence per bucket (see the PostgreSQL migration of the same name).
ALTER TABLE cache_repairs ADD COLUMN bucket INTEGER NOT NULL DEFAULT -1;
CREATE INDEX cache_repairs_bucket ON cache_repairs (bucket, create_time);
CREATE TABLE cache_epochs (
    bucket INTEGER PRIMARY KEY,
    epoch  INTEGER NOT NULL
);
WITH RECURSIVE b(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM b WHERE n < 255)
INSERT INTO cache_epochs (bucket, epoch) SELECT n, 0 FROM b
