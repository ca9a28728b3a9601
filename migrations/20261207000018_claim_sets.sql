-- A set of codes on one order (API.md §10) claimed among instances: every use of the set in one
-- statement, all or nothing. The locks are claim_uses' (taken in one sorted pass, so two sets
-- sharing a limit never wait on each other in a cycle); each use is claim_use's; a use refused
-- (or found existing) rolls back those claimed before it in the set, by the exception block's
-- subtransaction. Answers one row per use when all were taken, else only the row of the use
-- that stopped the set. The rows of a set carry its group id and codes, as a shipped set's do.
CREATE FUNCTION claim_set(
    p_ids UUID[], p_revs INT[], p_coupons BIGINT[], p_codes TEXT[], p_users TEXT[], p_orders TEXT[],
    p_values NUMERIC[], p_discounts NUMERIC[], p_ats TIMESTAMPTZ[], p_holds TIMESTAMPTZ[], p_campaigns BIGINT[],
    p_user_limits INT[], p_campaign_user_limits INT[], p_code_limits INT[], p_max_holds INT[],
    p_instance TEXT, p_epoch BIGINT, p_units_coupon BIGINT[], p_units_campaign BIGINT[], p_cents BIGINT[],
    p_currencies TEXT[], p_items_hashes BYTEA[], p_shipping NUMERIC[], p_allocations JSONB[],
    p_group UUID, p_group_codes JSONB)
RETURNS TABLE (n INT, outcome TEXT, rev INT, user_id TEXT, order_value NUMERIC, discount NUMERIC,
               hold_until TIMESTAMPTZ, released BOOLEAN, currency TEXT, items_hash BYTEA, shipping_discount NUMERIC)
LANGUAGE plpgsql AS $$
DECLARE
    k BIGINT;
    i INT;
    c RECORD;
    stopped INT := NULL;
    stopped_outcome TEXT;
    stopped_rev INT;
    stopped_user TEXT;
    stopped_value NUMERIC;
    stopped_discount NUMERIC;
    stopped_hold TIMESTAMPTZ;
    stopped_released BOOLEAN;
    revs INT[] := '{}';
BEGIN
    FOR k IN
        SELECT DISTINCT key FROM (
            SELECT hashtextextended('order:' || p_ids[j]::text, 0) AS key
              FROM generate_subscripts(p_ids, 1) j
            UNION ALL
            SELECT hashtextextended('user:' || p_coupons[j] || ':' || p_users[j], 0)
              FROM generate_subscripts(p_ids, 1) j WHERE p_user_limits[j] IS NOT NULL
            UNION ALL
            SELECT hashtextextended('campaign-user:' || p_campaigns[j] || ':' || p_users[j], 0)
              FROM generate_subscripts(p_ids, 1) j
             WHERE p_campaign_user_limits[j] IS NOT NULL AND p_campaigns[j] IS NOT NULL
            UNION ALL
            SELECT hashtextextended('code:' || p_coupons[j] || ':' || p_codes[j], 0)
              FROM generate_subscripts(p_ids, 1) j WHERE p_code_limits[j] IS NOT NULL AND p_codes[j] IS NOT NULL
            UNION ALL
            SELECT hashtextextended('holds:' || p_users[j], 0)
              FROM generate_subscripts(p_ids, 1) j WHERE p_holds[j] IS NOT NULL AND p_max_holds[j] IS NOT NULL
        ) keys ORDER BY key
    LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
    PERFORM 1 FROM quotas q
     WHERE (q.kind, q.scope_id) IN (
            SELECT 1::smallint, p_coupons[j] FROM generate_subscripts(p_ids, 1) j
            UNION SELECT 2::smallint, p_campaigns[j] FROM generate_subscripts(p_ids, 1) j WHERE p_campaigns[j] IS NOT NULL
            UNION SELECT 3::smallint, p_campaigns[j] FROM generate_subscripts(p_ids, 1) j WHERE p_campaigns[j] IS NOT NULL)
     ORDER BY q.kind, q.scope_id
       FOR UPDATE;
    BEGIN
        FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
            SELECT * INTO c FROM claim_use(p_ids[i], p_revs[i], p_coupons[i], p_codes[i], p_users[i], p_orders[i],
                             p_values[i], p_discounts[i], p_ats[i], p_holds[i], p_campaigns[i],
                             p_user_limits[i], p_campaign_user_limits[i], p_code_limits[i], p_max_holds[i],
                             p_instance, p_epoch, p_units_coupon[i], p_units_campaign[i], p_cents[i]);
            IF c.outcome <> 'taken' THEN
                stopped := i;
                stopped_outcome := c.outcome;
                stopped_rev := c.rev;
                stopped_user := c.user_id;
                stopped_value := c.order_value;
                stopped_discount := c.discount;
                stopped_hold := c.hold_until;
                stopped_released := c.released;
                RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'a use of the set was not taken';
            END IF;
            revs := revs || c.rev;
            UPDATE coupon_usage u SET currency = p_currencies[i], items_hash = p_items_hashes[i],
                   discount_applied = p_discounts[i] - coalesce(p_shipping[i], 0),
                   shipping_discount = p_shipping[i], allocation = p_allocations[i],
                   group_id = p_group, group_codes = p_group_codes
             WHERE u.id = p_ids[i];
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'P0001' THEN
        NULL;
    END;
    IF stopped IS NULL THEN
        RETURN QUERY SELECT j, 'taken'::text, revs[j], NULL::text, NULL::numeric, NULL::numeric,
               NULL::timestamptz, NULL::boolean, NULL::text, NULL::bytea, NULL::numeric
          FROM generate_subscripts(p_ids, 1) j;
        RETURN;
    END IF;
    RETURN QUERY SELECT stopped, stopped_outcome, stopped_rev, stopped_user, stopped_value, stopped_discount,
           stopped_hold, stopped_released, u.currency, u.items_hash, u.shipping_discount
      FROM (SELECT 1) one LEFT JOIN coupon_usage u ON stopped_outcome = 'exists' AND u.id = p_ids[stopped];
END $$;
