-- Each message's serialised chatmem.v1.Message, written with the row, so that streams and cache fills
-- send stored bytes instead of encoding every row again (server/storage/codec.py owns the encoding).
-- NULL for rows written before this migration: readers encode those on the fly.
ALTER TABLE messages ADD COLUMN encoded bytea;
