-- The heartbeat's stamps live apart from quota_instances. Every claim and every lease grant
-- holds its instance's row FOR SHARE (so that a stop or a write-off waits for it) while it
-- waits for its quota rows; a stamp written to that row waited behind all of them. Measured
-- with 100 clients on 3 instances redeeming one limited coupon: stamps took over a second,
-- the heartbeat took its connection for lost, and every limited redeem answered 503 until the
-- lock was taken again. A stamp is written only through the connection that holds the
-- instance's advisory lock, and a write-off takes that lock first, so a stamp needs no lock
-- on the instance's row.
CREATE TABLE quota_stamps (
    instance_id TEXT PRIMARY KEY,
    epoch       BIGINT NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL
);
