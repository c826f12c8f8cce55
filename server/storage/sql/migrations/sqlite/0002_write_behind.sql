-- Tombstones of deleted threads (so a late outbox flush never brings one back) and the list of cache
-- entries that may be stale because a write went around an unreachable Redis.
CREATE TABLE thread_tombstones (
    workspace_id TEXT    NOT NULL,
    thread_id    TEXT    NOT NULL,
    incarnation  INTEGER NOT NULL,
    delete_time  INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, thread_id)
) WITHOUT ROWID;

CREATE TABLE cache_repairs (
    kind         TEXT    NOT NULL,
    workspace_id TEXT    NOT NULL,
    object_id    TEXT    NOT NULL,
    create_time  INTEGER NOT NULL,
    PRIMARY KEY (kind, workspace_id, object_id)
) WITHOUT ROWID;
