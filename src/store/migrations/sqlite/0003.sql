-- Identities are ids: users, the owners of secrets and the grants of workload tokens are
-- referred to by ids that are never reused; names are for people. A deleted user stays as a
-- tombstone (deleted_at) whose name is free again.
CREATE TABLE users_v3 (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
);
INSERT INTO users_v3 (id, name, admin, created_at)
    SELECT lower(hex(randomblob(16))), name, admin, created_at FROM users;
-- Owners of existing secrets who are no user: on a store without users (a local store) the
-- local CLI's user, who goes on owning them; on a server's store a user deleted before ids
-- existed (deleting a user then left their secrets behind), who becomes a tombstone, so that a
-- new user of the name does not inherit them.
INSERT INTO users_v3 (id, name, admin, created_at, deleted_at)
    SELECT lower(hex(randomblob(16))), owner, 0, min(created_at),
           CASE WHEN (SELECT count(*) FROM users) = 0 THEN NULL ELSE CAST(strftime('%s', 'now') AS INTEGER) * 1000000000 END
    FROM secrets
    WHERE owner NOT IN (SELECT name FROM users) GROUP BY owner;
CREATE UNIQUE INDEX users_live_name ON users_v3 (name) WHERE deleted_at IS NULL;

CREATE TABLE members_v3 (
    user_id TEXT NOT NULL REFERENCES users_v3(id),
    workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    PRIMARY KEY (user_id, workspace)
);
INSERT INTO members_v3 (user_id, workspace)
    SELECT u.id, m.workspace FROM members m JOIN users_v3 u ON u.name = m.user_name;
INSERT INTO members_v3 (user_id, workspace)
    SELECT DISTINCT u.id, s.workspace FROM secrets s JOIN users_v3 u ON u.name = s.owner
    WHERE s.owner NOT IN (SELECT name FROM users) AND u.deleted_at IS NULL
    ON CONFLICT DO NOTHING;

ALTER TABLE secrets ADD COLUMN owner_id TEXT NOT NULL DEFAULT '';
UPDATE secrets SET owner_id = (SELECT id FROM users_v3 WHERE users_v3.name = secrets.owner);
CREATE INDEX secrets_by_owner ON secrets (owner_id);

CREATE TABLE tokens_v3 (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'workload')),
    user_id TEXT NOT NULL REFERENCES users_v3(id),
    workspace TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    max_expires_at INTEGER,
    ttl_secs INTEGER,
    revoked_at INTEGER,
    description TEXT NOT NULL DEFAULT '',
    minted_by TEXT
);
INSERT INTO tokens_v3 (id, hash, kind, user_id, workspace, created_at, expires_at,
                       max_expires_at, ttl_secs, revoked_at, description)
    SELECT t.id, t.hash, t.kind, u.id, t.workspace, t.created_at, t.expires_at,
           t.max_expires_at, t.ttl_secs, t.revoked_at, t.description
    FROM tokens t JOIN users_v3 u ON u.name = t.user_name;
CREATE INDEX tokens_by_user ON tokens_v3 (user_id);

-- A workload token's grants: the secrets it was minted for, by id (the name for display). A
-- secret deleted and re-created under the same name is a new id no grant names.
CREATE TABLE grants (
    token_id TEXT NOT NULL REFERENCES tokens_v3(id) ON DELETE CASCADE,
    secret_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (token_id, secret_id)
);
INSERT INTO grants (token_id, secret_id, name)
    SELECT t.id, s.id, j.value FROM tokens t, json_each(t.secrets) j
    JOIN secrets s ON s.workspace = t.workspace AND s.name = j.value;

DROP TABLE tokens;
DROP TABLE members;
DROP TABLE users;
ALTER TABLE users_v3 RENAME TO users;
ALTER TABLE members_v3 RENAME TO members;
ALTER TABLE tokens_v3 RENAME TO tokens;

-- Every action is audited, with its actor and target by name and by id.
ALTER TABLE audit RENAME COLUMN secret TO target;
ALTER TABLE audit ADD COLUMN actor_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN target_kind TEXT NOT NULL DEFAULT 'secret';
ALTER TABLE audit ADD COLUMN target_id TEXT NOT NULL DEFAULT '';
