-- Per-organisation quotas (kept in step with the other migrations folder): what an org stores
-- is summed over its uploads at each creation, so that sum reads an index, not the table.
CREATE INDEX uploads_org_state ON uploads (org, state);
