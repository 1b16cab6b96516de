-- Workload identity: a binding trusts tokens of one issuer whose claims match its rules, and
-- lets them act as one user for a set of that user's secrets (by id). The rules (audience,
-- subject and claim patterns, lives, where the issuer's keys come from, the granted secret ids)
-- are one JSON document the service reads and writes; the store keys and joins on the columns.
CREATE TABLE identity_bindings (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id),
    issuer TEXT NOT NULL,
    rules TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE INDEX identity_bindings_by_issuer ON identity_bindings (issuer);
