-- The audit over time. A coalesced record stands for `count` events alike (the same token
-- reading the same version of a secret, failed authentications from one address for one
-- reason) between `first_at` and `at`; a record of one event has count 1 and first_at 0 (read
-- as `at`: no rewrite of the rows already there). Records are appended, never changed, so the
-- id order is the order an export follows.
ALTER TABLE audit ADD COLUMN count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN first_at BIGINT NOT NULL DEFAULT 0;
-- Pruning finds the old records of repeated events of a workspace by action and time, without
-- passing over its records of changes (kept forever) on every batch.
CREATE INDEX audit_by_workspace_action_at ON audit (workspace, action, at);
-- A workspace's own coalescing interval and retention, in seconds; NULL is the server's.
ALTER TABLE workspaces ADD COLUMN audit_coalesce_secs BIGINT;
ALTER TABLE workspaces ADD COLUMN audit_retention_secs BIGINT;
