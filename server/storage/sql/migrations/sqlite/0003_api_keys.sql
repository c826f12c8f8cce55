-- API keys: only the SHA-256 of each key's secret is stored. A key is bound to one workspace and one role.
CREATE TABLE api_keys (
    key_id       TEXT    NOT NULL PRIMARY KEY,
    workspace_id TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    name         TEXT    NOT NULL DEFAULT '',
    secret_hash  BLOB    NOT NULL,
    create_time  INTEGER NOT NULL,
    revoke_time  INTEGER
) WITHOUT ROWID;

CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id, create_time)
