-- Every change to `coupons`, by this service or by any other SQL client, is announced on the
-- `coupon_changes` channel. One notification per statement, never the row itself (payloads
-- are capped at 8000 bytes and an oversized one fails the writer's transaction):
--   {"op": "insert" | "update" | "delete", "ids": [...]}   up to 500 ids
--   {"op": "bulk", "count": N}                               more; listeners reload everything
-- Listeners re-read the rows by id, so a duplicate or reordered notification is harmless.

CREATE FUNCTION coupons_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids BIGINT[];
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
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    IF cardinality(ids) <= 500 THEN
        PERFORM pg_notify('coupon_changes', json_build_object('op', lower(TG_OP), 'ids', ids)::text);
    ELSE
        PERFORM pg_notify('coupon_changes', json_build_object('op', 'bulk', 'count', cardinality(ids))::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER coupons_notify_insert AFTER INSERT ON coupons
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION coupons_notify_change();

CREATE TRIGGER coupons_notify_update AFTER UPDATE ON coupons
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION coupons_notify_change();

CREATE TRIGGER coupons_notify_delete AFTER DELETE ON coupons
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION coupons_notify_change();
