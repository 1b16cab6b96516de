-- Identities are ids (see the SQLite migration of the same change, 0003, for the why): users,
-- owners and workload token grants by ids never reused; deleted users stay as tombstones.
CREATE TABLE users_v2 (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    admin BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    deleted_at BIGINT
);
INSERT INTO users_v2 (id, name, admin, created_at)
    SELECT replace(gen_random_uuid()::text, '-', ''), name, CASE WHEN admin THEN 1 ELSE 0 END,
           created_at
    FROM users;
-- Owners of existing secrets who are no user: on a store without users (a local store) the
-- local CLI's user, who goes on owning them; on a server's store a user deleted before ids
-- existed (deleting a user then left their secrets behind), who becomes a tombstone, so that a
-- new user of the name does not inherit them.
INSERT INTO users_v2 (id, name, admin, created_at, deleted_at)
    SELECT replace(gen_random_uuid()::text, '-', ''), owner, 0, min(created_at),
           CASE WHEN (SELECT count(*) FROM users) = 0 THEN NULL ELSE (extract(epoch FROM now()) * 1000000000)::bigint END
    FROM secrets
    WHERE owner NOT IN (SELECT name FROM users) GROUP BY owner;
CREATE UNIQUE INDEX users_live_name ON users_v2 (name) WHERE deleted_at IS NULL;

CREATE TABLE members_v2 (
    user_id TEXT NOT NULL REFERENCES users_v2(id),
    workspace TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    PRIMARY KEY (user_id, workspace)
);
INSERT INTO members_v2 (user_id, workspace)
    SELECT u.id, m.workspace FROM members m JOIN users_v2 u ON u.name = m.user_name;
INSERT INTO members_v2 (user_id, workspace)
    SELECT DISTINCT u.id, s.workspace FROM secrets s JOIN users_v2 u ON u.name = s.owner
    WHERE s.owner NOT IN (SELECT name FROM users) AND u.deleted_at IS NULL
    ON CONFLICT DO NOTHING;

ALTER TABLE secrets ADD COLUMN owner_id TEXT NOT NULL DEFAULT '';
UPDATE secrets SET owner_id = (SELECT id FROM users_v2 WHERE users_v2.name = secrets.owner);
CREATE INDEX secrets_by_owner ON secrets (owner_id);

CREATE TABLE tokens_v2 (
    id TEXT PRIMARY KEY,
    hash BYTEA NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('user', 'workload')),
    user_id TEXT NOT NULL REFERENCES users_v2(id),
    workspace TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    max_expires_at BIGINT,
    ttl_secs BIGINT,
    revoked_at BIGINT,
    description TEXT NOT NULL DEFAULT '',
    minted_by TEXT
);
INSERT INTO tokens_v2 (id, hash, kind, user_id, workspace, created_at, expires_at,
                       max_expires_at, ttl_secs, revoked_at, description)
    SELECT t.id, t.hash, t.kind, u.id, t.workspace, t.created_at, t.expires_at,
           t.max_expires_at, t.ttl_secs, t.revoked_at, t.description
    FROM tokens t JOIN users_v2 u ON u.name = t.user_name;
CREATE INDEX tokens_by_user ON tokens_v2 (user_id);

CREATE TABLE grants (
    token_id TEXT NOT NULL REFERENCES tokens_v2(id) ON DELETE CASCADE,
    secret_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (token_id, secret_id)
);
INSERT INTO grants (token_id, secret_id, name)
    SELECT t.id, s.id, j.value
    FROM tokens t CROSS JOIN LATERAL json_array_elements_text(t.secrets::json) AS j(value)
    JOIN secrets s ON s.workspace = t.workspace AND s.name = j.value;

DROP TABLE tokens;
DROP TABLE members;
DROP TABLE users;
ALTER TABLE users_v2 RENAME TO users;
ALTER TABLE members_v2 RENAME TO members;
ALTER TABLE tokens_v2 RENAME TO tokens;

ALTER TABLE audit RENAME COLUMN secret TO target;
ALTER TABLE audit ADD COLUMN actor_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN target_kind TEXT NOT NULL DEFAULT 'secret';
ALTER TABLE audit ADD COLUMN target_id TEXT NOT NULL DEFAULT '';
