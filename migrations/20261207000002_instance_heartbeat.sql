-- An instance's identity is proved by a heartbeat (db::identity): its last stamp, by
-- PostgreSQL's clock. A write-off waits until it is the instance's own identity_timeout old;
-- the instance itself stops spending leases after half of that without a stamp. Its advisory
-- lock alone proves nothing for long: it goes with a PostgreSQL restart or a cut link.
ALTER TABLE quota_instances
    ADD COLUMN seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ADD COLUMN identity_timeout INTERVAL NOT NULL DEFAULT interval '10 seconds';

-- The DATA_DIR (by the id kept in it) whose journal holds what the live epoch sells. Another
-- process with the same instance id starts only from that directory while the epoch is live:
-- from any other, it would settle leases whose sales are in a journal it cannot ship.
ALTER TABLE quota_instances ADD COLUMN data_dir_id UUID NULL;
