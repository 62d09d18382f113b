-- Writer leases on uploads (kept in step with the other migrations folder), replacing
-- PostgreSQL session advisory locks: taken and released by short statements, so no database
-- connection is held while a body streams, and they work behind a transaction-pooling proxy.
-- lease_token grows with every take; offset commits must carry the current one (fencing).
ALTER TABLE uploads ADD COLUMN lease_owner TEXT;
ALTER TABLE uploads ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0;
ALTER TABLE uploads ADD COLUMN lease_expires BIGINT NOT NULL DEFAULT 0;
