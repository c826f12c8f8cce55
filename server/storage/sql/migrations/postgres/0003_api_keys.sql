-- API keys: only the SHA-256 of each key's secret is stored. A key is bound to one workspace and one role.
CREATE TABLE api_keys (
    key_id       text        PRIMARY KEY,
    workspace_id text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    name         text        NOT NULL DEFAULT '',
    secret_hash  bytea       NOT NULL,
    create_time  timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoke_time  timestamptz
);
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id, create_time);
