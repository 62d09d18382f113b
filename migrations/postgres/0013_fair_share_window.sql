-- Queue fairness counts an org's recent service (its running attempts plus the attempts it
-- started in the last minutes), so an org that was just served waits behind one that was not
-- (kept in step with the other migrations folder).
CREATE INDEX videos_org_started ON videos (org, started_at);
