-- Threads, messages, append idempotency records and preferences.
CREATE TABLE threads (
    workspace_id  text        NOT NULL,
    thread_id     text        NOT NULL,
    user_id       text        NOT NULL DEFAULT '',
    title         text        NOT NULL DEFAULT '',
    ttl_seconds   integer,
    pinned        boolean     NOT NULL DEFAULT false,
    last_seq      bigint      NOT NULL DEFAULT 0,
    message_count bigint      NOT NULL DEFAULT 0,
    -- Creation time in microseconds from the database clock: a re-created thread gets a larger one,
    -- which lets the cache tell a stale fill of a deleted thread from the new thread.
    incarnation   bigint      NOT NULL
        DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000000))::bigint,
    create_time   timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workspace_id, thread_id)
);
CREATE INDEX threads_by_user ON threads (workspace_id, user_id, create_time DESC, thread_id DESC);

CREATE TABLE messages (
    workspace_id text        NOT NULL,
    thread_id    text        NOT NULL,
    seq          bigint      NOT NULL,
    role         smallint    NOT NULL,
    content      text        NOT NULL,
    name         text        NOT NULL DEFAULT '',
    metadata     jsonb       NOT NULL DEFAULT '{}',
    create_time  timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, thread_id, seq)
);

CREATE TABLE append_requests (
    workspace_id  text    NOT NULL,
    thread_id     text    NOT NULL,
    request_id    text    NOT NULL,
    first_seq     bigint  NOT NULL,
    count         integer NOT NULL,
    message_count bigint  NOT NULL,
    PRIMARY KEY (workspace_id, thread_id, request_id)
);

CREATE TABLE preference_sets (
    workspace_id text   NOT NULL,
    user_id      text   NOT NULL,
    version      bigint NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE preferences (
    workspace_id text        NOT NULL,
    user_id      text        NOT NULL,
    key          text        NOT NULL,
    value        text        NOT NULL,
    update_time  timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, user_id, key)
);
