-- What each instance has shipped, on PostgreSQL's clock: every use it acknowledged before
-- shipped_through is in coupon_usage (NULL: nothing proved yet in this epoch). An instance
-- asked to release an order it finds nowhere answers 404 only once every other live or
-- waiting instance has shipped through the time it was asked; until then a use journalled
-- on one of them (a coupon with no limit, which is not claimed) may still be on its way.
-- Written by the heartbeat, through the connection that holds the instance's lock; it
-- starts again at NULL with each epoch.
ALTER TABLE quota_stamps ADD COLUMN shipped_through TIMESTAMPTZ NULL;
