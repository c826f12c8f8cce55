-- Threads, messages, append idempotency records and preferences. Times are microseconds since the epoch.
CREATE TABLE threads (
    workspace_id  TEXT    NOT NULL,
    thread_id     TEXT    NOT NULL,
    user_id       TEXT    NOT NULL DEFAULT '',
    title         TEXT    NOT NULL DEFAULT '',
    ttl_seconds   INTEGER,
    pinned        INTEGER NOT NULL DEFAULT 0,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    message_count INTEGER NOT NULL DEFAULT 0,
    incarnation   INTEGER NOT NULL,
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, thread_id)
) WITHOUT ROWID;
CREATE INDEX threads_by_user ON threads (workspace_id, user_id, create_time DESC, thread_id DESC);

CREATE TABLE messages (
    workspace_id TEXT    NOT NULL,
    thread_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    role         INTEGER NOT NULL,
    content      TEXT    NOT NULL,
    name         TEXT    NOT NULL DEFAULT '',
    metadata     TEXT    NOT NULL DEFAULT '{}',
    create_time  INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, thread_id, seq)
) WITHOUT ROWID;

CREATE TABLE append_requests (
    workspace_id  TEXT    NOT NULL,
    thread_id     TEXT    NOT NULL,
    request_id    TEXT    NOT NULL,
    first_seq     INTEGER NOT NULL,
    count         INTEGER NOT NULL,
    message_count INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, thread_id, request_id)
) WITHOUT ROWID;

CREATE TABLE preference_sets (
    workspace_id TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
) WITHOUT ROWID;

CREATE TABLE preferences (
    workspace_id TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    value        TEXT    NOT NULL,
    update_time  INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, user_id, key)
) WITHOUT ROWID;
