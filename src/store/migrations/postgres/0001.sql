CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE workspaces (
    name TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE secrets (
    workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    visibility TEXT NOT NULL CHECK (visibility IN ('private', 'public')),
    owner TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    version BIGINT NOT NULL CHECK (version >= 1),
    sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    workspace TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    secret TEXT NOT NULL,
    version BIGINT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_workspace ON audit (workspace, id);
CREATE INDEX audit_by_at ON audit (at);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE TABLE members (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    PRIMARY KEY (user_name, workspace)
);
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BYTEA NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'workload')),
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    workspace TEXT,
    secrets TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_expires_at BIGINT,
    ttl_secs BIGINT,
    revoked_at BIGINT,
    description TEXT NOT NULL DEFAULT ''
);
INSERT INTO workspaces (name, created_at) VALUES ('default', 0);
