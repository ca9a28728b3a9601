-- Uses taken on a cart (API.md §9, §10's storage) keep what refunds, tax and replays need:
-- the currency of their amounts, the SHA-256 of the request's cart (a replay must send the
-- same), what came off shipping, and the allocation of the discount over lines and units. A
-- use taken without §9's fields leaves them NULL and its amounts stay in the default
-- currency, as before.
--
-- With a currency, order_value, discount_applied and shipping_discount are in its major units
-- with its decimals (1000 JPY is 1000, 1.250 KWD is 1.250). discount_applied is the
-- merchandise's; the code's effect, which a campaign's budget is charged, adds
-- shipping_discount: the budget's sums below count both.
-- The decimals of a use's amounts: its currency's, 2 without one (§9's currencies with 0 or 3).
CREATE FUNCTION coupon_usage_decimals(p_currency TEXT) RETURNS INT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_currency IN ('BIF', 'CLP', 'DJF', 'GNF', 'ISK', 'JPY', 'KMF', 'KRW', 'PYG', 'RWF', 'UGX', 'UYI',
                            'VND', 'VUV', 'XAF', 'XOF', 'XPF') THEN 0
        WHEN p_currency IN ('BHD', 'IQD', 'JOD', 'KWD', 'LYD', 'OMR', 'TND') THEN 3
        ELSE 2
    END
$$;

ALTER TABLE coupon_usage
    ADD COLUMN currency TEXT NULL,
    ADD COLUMN items_hash BYTEA NULL,
    ADD COLUMN shipping_discount NUMERIC NULL,
    ADD COLUMN allocation JSONB NULL,
    ADD CONSTRAINT coupon_usage_cart_whole CHECK (
        (currency IS NULL) = (items_hash IS NULL)
        AND (currency IS NULL) = (shipping_discount IS NULL)
        AND (currency IS NULL) = (allocation IS NULL)
        AND octet_length(items_hash) = 32),
    ADD CONSTRAINT coupon_usage_currency_format CHECK (currency ~ '^[A-Z]{3}$'),
    DROP CONSTRAINT coupon_usage_amounts,
    ADD CONSTRAINT coupon_usage_amounts CHECK (
        order_value >= 0 AND discount_applied >= 0 AND shipping_discount >= 0
        AND order_value = round(order_value, coupon_usage_decimals(currency))
        AND discount_applied = round(discount_applied, coupon_usage_decimals(currency))
        AND shipping_discount = round(shipping_discount, coupon_usage_decimals(currency))
    ) NOT VALID;

ALTER TABLE coupon_usage VALIDATE CONSTRAINT coupon_usage_amounts;

-- A campaign's budget counts each live use's effect: merchandise and shipping.
CREATE OR REPLACE FUNCTION quota_live_contribution(p_kind SMALLINT, p_scope BIGINT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT CASE p_kind
        WHEN 1 THEN (SELECT count(*) FROM coupon_usage WHERE coupon_id = p_scope AND released_at IS NULL)
        WHEN 2 THEN (SELECT count(*) FROM coupon_usage WHERE campaign_id = p_scope AND released_at IS NULL)
        ELSE (SELECT coalesce(sum(round((discount_applied + coalesce(shipping_discount, 0)) * 100)), 0)::bigint
              FROM coupon_usage WHERE campaign_id = p_scope AND released_at IS NULL)
    END
$$;

-- change_use as before; a release gives its campaign's budget back the use's whole effect.
CREATE OR REPLACE FUNCTION change_use(p_id UUID, p_rev INT, p_release BOOLEAN, p_at TIMESTAMPTZ)
RETURNS TABLE (changed BOOLEAN, rev INT, user_id TEXT, hold_until TIMESTAMPTZ, released BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cur coupon_usage%ROWTYPE;
    cents BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('order:' || p_id::text, 0));
    SELECT * INTO cur FROM coupon_usage u WHERE u.id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF cur.rev <> p_rev OR cur.released_at IS NOT NULL
       OR (NOT p_release AND (cur.hold_expires_at IS NULL OR cur.hold_expires_at <= p_at)) THEN
        RETURN QUERY SELECT false, cur.rev, cur.user_id, cur.hold_expires_at, cur.released_at IS NOT NULL;
        RETURN;
    END IF;
    IF p_release THEN
        UPDATE coupon_usage SET released_at = p_at, rev = p_rev + 1 WHERE id = p_id;
        cents := round((cur.discount_applied + coalesce(cur.shipping_discount, 0)) * 100)::bigint;
        IF cur.campaign_id IS NULL THEN
            PERFORM quota_apply(ARRAY[1]::smallint[], ARRAY[cur.coupon_id], ARRAY[-1]::bigint[], ARRAY[0]::bigint[], '', ARRAY[0]::bigint[]);
        ELSE
            PERFORM quota_apply(ARRAY[1, 2, 3]::smallint[], ARRAY[cur.coupon_id, cur.campaign_id, cur.campaign_id],
                ARRAY[-1, -1, -cents]::bigint[], ARRAY[0, 0, 0]::bigint[], '', ARRAY[0, 0, 0]::bigint[]);
        END IF;
        RETURN QUERY SELECT true, p_rev + 1, cur.user_id, cur.hold_expires_at, true;
    ELSE
        UPDATE coupon_usage SET hold_expires_at = NULL, rev = p_rev + 1 WHERE id = p_id;
        RETURN QUERY SELECT true, p_rev + 1, cur.user_id, NULL::timestamptz, false;
    END IF;
END $$;

-- claim_uses as before, with each claim's cart. A claim's discount is the code's effect
-- (claim_use charges a budget with it); the row keeps the merchandise's in discount_applied
-- and shipping's beside it, with the cart's currency, hash and allocation (or clears them
-- from a released hold's row it took again). For an order that has a row, the row's cart is
-- answered too, so that a replay elsewhere is compared with the request that made it.
DROP FUNCTION claim_uses(UUID[], INT[], BIGINT[], TEXT[], TEXT[], TEXT[], NUMERIC[], NUMERIC[], TIMESTAMPTZ[],
    TIMESTAMPTZ[], BIGINT[], INT[], INT[], INT[], INT[], TEXT, BIGINT, BIGINT[], BIGINT[], BIGINT[]);

CREATE FUNCTION claim_uses(
    p_ids UUID[], p_revs INT[], p_coupons BIGINT[], p_codes TEXT[], p_users TEXT[], p_orders TEXT[],
    p_values NUMERIC[], p_discounts NUMERIC[], p_ats TIMESTAMPTZ[], p_holds TIMESTAMPTZ[], p_campaigns BIGINT[],
    p_user_limits INT[], p_campaign_user_limits INT[], p_code_limits INT[], p_max_holds INT[],
    p_instance TEXT, p_epoch BIGINT, p_units_coupon BIGINT[], p_units_campaign BIGINT[], p_cents BIGINT[],
    p_currencies TEXT[], p_items_hashes BYTEA[], p_shipping NUMERIC[], p_allocations JSONB[])
RETURNS TABLE (n INT, outcome TEXT, rev INT, user_id TEXT, order_value NUMERIC, discount NUMERIC,
               hold_until TIMESTAMPTZ, released BOOLEAN, currency TEXT, items_hash BYTEA, shipping_discount NUMERIC)
LANGUAGE plpgsql AS $$
DECLARE
    k BIGINT;
    i INT;
    c RECORD;
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
        SELECT * INTO c FROM claim_use(p_ids[i], p_revs[i], p_coupons[i], p_codes[i], p_users[i], p_orders[i],
                         p_values[i], p_discounts[i], p_ats[i], p_holds[i], p_campaigns[i],
                         p_user_limits[i], p_campaign_user_limits[i], p_code_limits[i], p_max_holds[i],
                         p_instance, p_epoch, p_units_coupon[i], p_units_campaign[i], p_cents[i]);
        IF c.outcome = 'taken' THEN
            UPDATE coupon_usage u SET currency = p_currencies[i], items_hash = p_items_hashes[i],
                   discount_applied = p_discounts[i] - coalesce(p_shipping[i], 0),
                   shipping_discount = p_shipping[i], allocation = p_allocations[i]
             WHERE u.id = p_ids[i] AND (p_currencies[i] IS NOT NULL OR u.currency IS NOT NULL);
        END IF;
        RETURN QUERY SELECT i, c.outcome, c.rev, c.user_id, c.order_value, c.discount, c.hold_until, c.released,
               u.currency, u.items_hash, u.shipping_discount
          FROM (SELECT 1) one LEFT JOIN coupon_usage u ON c.outcome = 'exists' AND u.id = p_ids[i];
    END LOOP;
END $$;
