CREATE TABLE users (
    name TEXT PRIMARY KEY,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE members (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    PRIMARY KEY (user_name, workspace)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'workload')),
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    workspace TEXT,
    secrets TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    max_expires_at INTEGER,
    ttl_secs INTEGER,
    revoked_at INTEGER,
    description TEXT NOT NULL DEFAULT ''
);
ALTER TABLE audit ADD COLUMN address TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_by_at ON audit (at);
