-- Claims sent together (group commit): the claims waiting on one instance go to PostgreSQL
-- in one statement, so that they share one round trip and one commit, and a hot limit's
-- quotas row is locked once for many of them instead of once per claim.
--
-- Each claim is decided exactly as claim_use decides it alone, one after the other, in one
-- transaction. Before any of them, every key the claims lock is taken in one order: first the
-- advisory keys, sorted, then the quotas rows, sorted by (kind, scope). A batch therefore never
-- waits for a lock while holding a quotas row it took for a later claim, and two batches never
-- wait on each other in a circle (claim_use alone takes its keys in claim order: it is no
-- longer called by the service except through here).
CREATE FUNCTION claim_uses(
    p_ids UUID[], p_revs INT[], p_coupons BIGINT[], p_codes TEXT[], p_users TEXT[], p_orders TEXT[],
    p_values NUMERIC[], p_discounts NUMERIC[], p_ats TIMESTAMPTZ[], p_holds TIMESTAMPTZ[], p_campaigns BIGINT[],
    p_user_limits INT[], p_campaign_user_limits INT[], p_code_limits INT[], p_max_holds INT[],
    p_instance TEXT, p_epoch BIGINT, p_units_coupon BIGINT[], p_units_campaign BIGINT[], p_cents BIGINT[])
RETURNS TABLE (n INT, outcome TEXT, rev INT, user_id TEXT, order_value NUMERIC, discount NUMERIC,
               hold_until TIMESTAMPTZ, released BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    k BIGINT;
    i INT;
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
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        RETURN QUERY SELECT i, c.outcome, c.rev, c.user_id, c.order_value, c.discount, c.hold_until, c.released
          FROM claim_use(p_ids[i], p_revs[i], p_coupons[i], p_codes[i], p_users[i], p_orders[i],
                         p_values[i], p_discounts[i], p_ats[i], p_holds[i], p_campaigns[i],
                         p_user_limits[i], p_campaign_user_limits[i], p_code_limits[i], p_max_holds[i],
                         p_instance, p_epoch, p_units_coupon[i], p_units_campaign[i], p_cents[i]) c;
    END LOOP;
END $$;
