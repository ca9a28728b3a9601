-- A claim whose answer was lost may have spent lease units. The instance settles it by
-- asking what happened; the order's row alone cannot always say (a hold claimed, released,
-- and its order claimed again elsewhere before the doubt settled overwrites it, and the
-- instance once put back units that had been spent: a simulated cluster, seed 30374). So a
-- claim that spends lease units leaves a note of itself, in the same transaction, which the
-- instance reads when it settles a doubt and prunes when no doubt can need it any more.
CREATE TABLE claim_spends (
    instance_id TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    id          UUID NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (instance_id, epoch, id, at)
);

CREATE OR REPLACE FUNCTION claim_use(
    p_id UUID, p_rev INT, p_coupon BIGINT, p_code TEXT, p_user TEXT, p_order TEXT,
    p_value NUMERIC, p_discount NUMERIC, p_at TIMESTAMPTZ, p_hold TIMESTAMPTZ, p_campaign BIGINT,
    p_user_limit INT, p_campaign_user_limit INT, p_code_limit INT, p_max_holds INT,
    p_instance TEXT, p_epoch BIGINT, p_units_coupon BIGINT, p_units_campaign BIGINT, p_cents BIGINT)
RETURNS TABLE (outcome TEXT, rev INT, user_id TEXT, order_value NUMERIC, discount NUMERIC,
               hold_until TIMESTAMPTZ, released BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cur coupon_usage%ROWTYPE;
    new_rev INT := p_rev;
    cents BIGINT := round(p_discount * 100)::bigint;
    kinds SMALLINT[] := ARRAY[]::smallint[];
    scopes BIGINT[] := ARRAY[]::bigint[];
    used BIGINT[] := ARRAY[]::bigint[];
    spent BIGINT[] := ARRAY[]::bigint[];
    epochs BIGINT[] := ARRAY[]::bigint[];
BEGIN
    PERFORM 1 FROM quota_instances q WHERE q.instance_id = p_instance AND q.epoch = p_epoch AND q.state = 'live' FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'fenced'::text, 0, NULL::text, NULL::numeric, NULL::numeric, NULL::timestamptz, NULL::boolean;
        RETURN;
    END IF;
    -- Keys are locked in one order everywhere: the order, the user in the coupon, the user
    -- in the campaign, the code, the user's holds.
    PERFORM pg_advisory_xact_lock(hashtextextended('order:' || p_id::text, 0));
    SELECT * INTO cur FROM coupon_usage u WHERE u.id = p_id;
    IF FOUND THEN
        -- Live, or a released redemption (its order stays spent).
        IF cur.released_at IS NULL OR cur.hold_expires_at IS NULL THEN
            RETURN QUERY SELECT 'exists'::text, cur.rev, cur.user_id, cur.order_value, cur.discount_applied,
                cur.hold_expires_at, cur.released_at IS NOT NULL;
            RETURN;
        END IF;
        -- A released hold leaves its order free again.
        new_rev := greatest(p_rev, cur.rev + 1);
    END IF;
    IF p_user_limit IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('user:' || p_coupon || ':' || p_user, 0));
        IF (SELECT count(*) FROM coupon_usage u WHERE u.coupon_id = p_coupon AND u.user_id = p_user
                AND u.released_at IS NULL) >= p_user_limit THEN
            RETURN QUERY SELECT 'user_limit'::text, 0, NULL::text, NULL::numeric, NULL::numeric, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
    END IF;
    IF p_campaign_user_limit IS NOT NULL AND p_campaign IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('campaign-user:' || p_campaign || ':' || p_user, 0));
        IF (SELECT count(*) FROM coupon_usage u WHERE u.campaign_id = p_campaign AND u.user_id = p_user
                AND u.released_at IS NULL) >= p_campaign_user_limit THEN
            RETURN QUERY SELECT 'campaign_user_limit'::text, 0, NULL::text, NULL::numeric, NULL::numeric, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
    END IF;
    IF p_code_limit IS NOT NULL AND p_code IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('code:' || p_coupon || ':' || p_code, 0));
        IF (SELECT count(*) FROM coupon_usage u WHERE u.coupon_id = p_coupon AND u.code = p_code
                AND u.released_at IS NULL) >= p_code_limit THEN
            RETURN QUERY SELECT 'code_limit'::text, 0, NULL::text, NULL::numeric, NULL::numeric, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
    END IF;
    IF p_hold IS NOT NULL AND p_max_holds IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('holds:' || p_user, 0));
        IF (SELECT count(*) FROM coupon_usage u WHERE u.user_id = p_user AND u.released_at IS NULL
                AND u.hold_expires_at IS NOT NULL) >= p_max_holds THEN
            RETURN QUERY SELECT 'too_many_holds'::text, 0, NULL::text, NULL::numeric, NULL::numeric, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
    END IF;
    INSERT INTO coupon_usage AS u (id, rev, coupon_id, code, user_id, order_id, order_value, discount_applied,
                                   used_at, hold_expires_at, campaign_id, instance_id)
    VALUES (p_id, new_rev, p_coupon, p_code, p_user, p_order, p_value, p_discount, p_at, p_hold, p_campaign, p_instance)
    ON CONFLICT (id) DO UPDATE SET rev = EXCLUDED.rev, code = EXCLUDED.code, user_id = EXCLUDED.user_id,
        order_value = EXCLUDED.order_value, discount_applied = EXCLUDED.discount_applied, used_at = EXCLUDED.used_at,
        hold_expires_at = EXCLUDED.hold_expires_at, campaign_id = EXCLUDED.campaign_id,
        instance_id = EXCLUDED.instance_id, released_at = NULL;
    kinds := kinds || 1::smallint; scopes := scopes || p_coupon; used := used || 1::bigint;
    spent := spent || p_units_coupon; epochs := epochs || p_epoch;
    IF p_campaign IS NOT NULL THEN
        kinds := kinds || 2::smallint || 3::smallint; scopes := scopes || p_campaign || p_campaign;
        used := used || 1::bigint || cents; spent := spent || p_units_campaign || p_cents;
        epochs := epochs || p_epoch || p_epoch;
    END IF;
    PERFORM quota_apply(kinds, scopes, used, spent, p_instance, epochs);
    IF p_units_coupon > 0 OR p_units_campaign > 0 OR p_cents > 0 THEN
        INSERT INTO claim_spends (instance_id, epoch, id, at) VALUES (p_instance, p_epoch, p_id, p_at)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN QUERY SELECT 'taken'::text, new_rev, p_user, p_value, p_discount, p_hold, false;
END $$;

