-- Several codes on one order (API.md §10): the uses a set of codes took together share a group
-- id, and each keeps every code the request named with what became of it (taken, or why not),
-- so that a replay of the set answers the same after a restart. Written with the uses, in the
-- one transaction that ships the set; NULL for a use of one code, as before.
ALTER TABLE coupon_usage
    ADD COLUMN group_id UUID NULL DEFAULT NULL,
    ADD COLUMN group_codes JSONB NULL,
    ADD CONSTRAINT coupon_usage_group_whole CHECK (
        (group_id IS NULL) = (group_codes IS NULL)
        AND (group_codes IS NULL OR jsonb_typeof(group_codes) = 'array'));

CREATE INDEX coupon_usage_group ON coupon_usage (group_id) WHERE group_id IS NOT NULL;
