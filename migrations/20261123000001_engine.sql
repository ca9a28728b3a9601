-- The engine's ledger events reach coupon_usage idempotently through a revision: every event
-- of one redemption carries a higher one, and a row only takes an event newer than itself.
-- A hold is a row with hold_expires_at set; a bulk code's redemption names its code.
ALTER TABLE coupon_usage
    ADD COLUMN rev INT NOT NULL DEFAULT 1,
    ADD COLUMN code TEXT NULL,
    ADD COLUMN hold_expires_at TIMESTAMPTZ NULL;

-- Changes to coupons are announced in chunks of at most 300 ids per notification (a payload
-- must stay under 8000 bytes), however many rows one statement touches, so that listeners
-- re-read exactly the rows that changed instead of reloading every coupon. The chunks of one
-- statement share a group and say how many there are, so a listener applies them together:
--   {"entity": "coupon", "op": "insert" | "update" | "delete", "ids": [...],
--    "group": "<uuid>", "parts": N}
CREATE OR REPLACE FUNCTION coupons_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids BIGINT[];
    n INT;
    first INT := 1;
    chunk CONSTANT INT := 300;
    grp TEXT := gen_random_uuid()::text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(id ORDER BY id) INTO ids FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(id ORDER BY id) INTO ids FROM old_rows;
    ELSE
        -- An UPDATE may change an id: announce both sides.
        SELECT array_agg(id ORDER BY id) INTO ids
        FROM (SELECT id FROM new_rows UNION SELECT id FROM old_rows) AS changed;
    END IF;
    n := coalesce(cardinality(ids), 0);
    WHILE first <= n LOOP
        PERFORM pg_notify('coupon_changes', json_build_object(
            'entity', 'coupon', 'op', lower(TG_OP), 'ids', ids[first:first + chunk - 1],
            'group', grp, 'parts', (n + chunk - 1) / chunk)::text);
        first := first + chunk;
    END LOOP;
    RETURN NULL;
END $$;
