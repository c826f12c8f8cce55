-- Tombstones of deleted threads (so a late outbox flush never brings one back) and the list of cache
-- entries that may be stale because a write went around an unreachable Redis.
CREATE TABLE thread_tombstones (
    workspace_id text        NOT NULL,
    thread_id    text        NOT NULL,
    incarnation  bigint      NOT NULL,
    delete_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workspace_id, thread_id)
);

CREATE TABLE cache_repairs (
    kind         char(1)     NOT NULL,  -- 't' thread, 'u' user preferences
    workspace_id text        NOT NULL,
    object_id    text        NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, workspace_id, object_id)
);
