-- ForkThread records a fork's parent and the parent's last copied seq. CompactThread keeps the client's
-- summary (a serialised chatmem.v1.Message carrying seq = compacted_through) and the request id that made
-- it, so a retry changes nothing. The compacted messages themselves stay in the messages table.
ALTER TABLE threads ADD COLUMN parent_thread_id TEXT NOT NULL DEFAULT '';
ALTER TABLE threads ADD COLUMN fork_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN compacted_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN summary BLOB;
ALTER TABLE threads ADD COLUMN compact_request_id TEXT NOT NULL DEFAULT '';
