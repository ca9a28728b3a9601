-- Several instances on one database (API.md §6).
--
-- Totals (a coupon's usage_limit, a campaign's cap and budget) are escrowed: each instance
-- leases a block of units from `quotas` and spends it from memory; a use is counted in
-- `used` when its row reaches coupon_usage, and in the same statement its units leave the
-- lease that paid for it. So, for every scope, at every commit:
--     used = the contribution of its live rows,  held = Σ its leases' held,
--     used + held <= quota_limit  (grants never pass it; only a write-off can, and says so).
-- Per-user limits, a bulk code's uses and a user's live holds are decided by PostgreSQL in
-- `claim_use`, which inserts the row itself: their rows are always in coupon_usage.

-- An instance's identity, bound to its DATA_DIR; every start is a new epoch, and a lease of
-- an older epoch can neither grow nor be spent by a zombie.
CREATE TABLE quota_instances (
    instance_id TEXT PRIMARY KEY,
    epoch       BIGINT NOT NULL DEFAULT 1,
    state       TEXT NOT NULL DEFAULT 'live',
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    stopped_at  TIMESTAMPTZ NULL,
    CONSTRAINT quota_instances_state_known CHECK (state IN ('live', 'stopped', 'written_off')),
    CONSTRAINT quota_instances_id_format CHECK (length(instance_id) BETWEEN 1 AND 64 AND instance_id !~ '[[:cntrl:][:space:]]')
);

-- kind 1: a coupon's uses; 2: a campaign's uses; 3: a campaign's budget in cents. A row
-- exists from the first time the scope has a limit and is kept up to date from then on.
CREATE TABLE quotas (
    kind        SMALLINT NOT NULL,
    scope_id    BIGINT NOT NULL,
    quota_limit BIGINT NULL,
    used        BIGINT NOT NULL DEFAULT 0,
    held        BIGINT NOT NULL DEFAULT 0,
    -- Set when a grant found nothing free while other instances held units: they give back
    -- what they hold unspent when they next poll.
    reclaim_seq BIGINT NULL,
    PRIMARY KEY (kind, scope_id),
    CONSTRAINT quotas_kind_known CHECK (kind IN (1, 2, 3)),
    CONSTRAINT quotas_held_non_negative CHECK (held >= 0)
) WITH (fillfactor = 50);

CREATE SEQUENCE quota_reclaim_seq;
CREATE INDEX quotas_reclaim_idx ON quotas (reclaim_seq) WHERE reclaim_seq IS NOT NULL;

CREATE TABLE quota_leases (
    kind        SMALLINT NOT NULL,
    scope_id    BIGINT NOT NULL,
    instance_id TEXT NOT NULL REFERENCES quota_instances (instance_id),
    epoch       BIGINT NOT NULL,
    -- Units granted and not yet spent into a shipped row or given back.
    held        BIGINT NOT NULL DEFAULT 0,
    granted     BIGINT NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, scope_id, instance_id, epoch),
    FOREIGN KEY (kind, scope_id) REFERENCES quotas (kind, scope_id),
    CONSTRAINT quota_leases_held_non_negative CHECK (held >= 0)
) WITH (fillfactor = 50);

CREATE INDEX quota_leases_instance_idx ON quota_leases (instance_id, epoch) WHERE held > 0;

-- What a row counts in: the campaign whose use and budget it took (none for a zero
-- discount); the instance that made it (which alone changes it without asking PostgreSQL);
-- and a change sequence every instance follows to see the others' uses.
ALTER TABLE coupon_usage ADD COLUMN campaign_id BIGINT NULL, ADD COLUMN instance_id TEXT NULL;
UPDATE coupon_usage u SET campaign_id = c.campaign_id
FROM coupons c WHERE c.id = u.coupon_id AND c.campaign_id IS NOT NULL AND u.discount_applied > 0;

CREATE SEQUENCE coupon_usage_seq;
ALTER TABLE coupon_usage ADD COLUMN seq BIGINT NOT NULL DEFAULT nextval('coupon_usage_seq');
CREATE INDEX coupon_usage_seq_idx ON coupon_usage (seq);

CREATE FUNCTION coupon_usage_sequence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.seq := nextval('coupon_usage_seq');
    RETURN NEW;
END $$;
CREATE TRIGGER coupon_usage_sequence BEFORE UPDATE ON coupon_usage
    FOR EACH ROW EXECUTE FUNCTION coupon_usage_sequence();

CREATE INDEX coupon_usage_live_campaign_user_idx ON coupon_usage (campaign_id, user_id)
    WHERE released_at IS NULL AND campaign_id IS NOT NULL;
CREATE INDEX coupon_usage_live_code_idx ON coupon_usage (coupon_id, code)
    WHERE released_at IS NULL AND code IS NOT NULL;
CREATE INDEX coupon_usage_live_holds_idx ON coupon_usage (user_id)
    WHERE released_at IS NULL AND hold_expires_at IS NOT NULL;

-- One order id redeemed by two users on two instances at once (a coupon without claims):
-- the row first shipped is kept, the other is listed here.
CREATE TABLE order_conflicts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    usage_id    UUID NOT NULL,
    coupon_id   BIGINT NOT NULL,
    order_id    TEXT NOT NULL,
    kept_user   TEXT NOT NULL,
    lost_user   TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    detected_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The contribution of live rows to one scope, now.
CREATE FUNCTION quota_live_contribution(p_kind SMALLINT, p_scope BIGINT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT CASE p_kind
        WHEN 1 THEN (SELECT count(*) FROM coupon_usage WHERE coupon_id = p_scope AND released_at IS NULL)
        WHEN 2 THEN (SELECT count(*) FROM coupon_usage WHERE campaign_id = p_scope AND released_at IS NULL)
        ELSE (SELECT coalesce(sum(round(discount_applied * 100)), 0)::bigint FROM coupon_usage
              WHERE campaign_id = p_scope AND released_at IS NULL)
    END
$$;

-- Keeps quota_limit in step with a definition; the first limit a scope gets counts its live
-- rows, with writers to coupon_usage held off until this transaction commits.
CREATE FUNCTION quota_set_limit(p_kind SMALLINT, p_scope BIGINT, p_limit BIGINT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE quotas SET quota_limit = p_limit WHERE kind = p_kind AND scope_id = p_scope;
    IF NOT FOUND AND p_limit IS NOT NULL THEN
        LOCK TABLE coupon_usage IN SHARE MODE;
        INSERT INTO quotas (kind, scope_id, quota_limit, used)
        VALUES (p_kind, p_scope, p_limit, quota_live_contribution(p_kind, p_scope))
        ON CONFLICT (kind, scope_id) DO UPDATE SET quota_limit = EXCLUDED.quota_limit;
    END IF;
END $$;

CREATE FUNCTION coupons_quota_limit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.usage_limit IS DISTINCT FROM OLD.usage_limit THEN
        PERFORM quota_set_limit(1::smallint, NEW.id, NEW.usage_limit::bigint);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER coupons_quota_limit AFTER INSERT OR UPDATE OF usage_limit ON coupons
    FOR EACH ROW EXECUTE FUNCTION coupons_quota_limit();

CREATE FUNCTION campaigns_quota_limit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.usage_limit IS DISTINCT FROM OLD.usage_limit THEN
        PERFORM quota_set_limit(2::smallint, NEW.id, NEW.usage_limit::bigint);
    END IF;
    IF TG_OP = 'INSERT' OR NEW.budget IS DISTINCT FROM OLD.budget THEN
        PERFORM quota_set_limit(3::smallint, NEW.id, round(NEW.budget * 100)::bigint);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER campaigns_quota_limit AFTER INSERT OR UPDATE OF usage_limit, budget ON campaigns
    FOR EACH ROW EXECUTE FUNCTION campaigns_quota_limit();

CREATE FUNCTION quotas_forget_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM quota_leases WHERE kind = TG_ARGV[0]::smallint AND scope_id = OLD.id;
    DELETE FROM quotas WHERE kind = TG_ARGV[0]::smallint AND scope_id = OLD.id;
    IF TG_ARGV[0] = '2' THEN
        DELETE FROM quota_leases WHERE kind = 3 AND scope_id = OLD.id;
        DELETE FROM quotas WHERE kind = 3 AND scope_id = OLD.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER coupons_quota_deleted AFTER DELETE ON coupons
    FOR EACH ROW EXECUTE FUNCTION quotas_forget_deleted('1');
CREATE TRIGGER campaigns_quota_deleted AFTER DELETE ON campaigns
    FOR EACH ROW EXECUTE FUNCTION quotas_forget_deleted('2');

INSERT INTO quotas (kind, scope_id, quota_limit, used)
SELECT 1, id, usage_limit, quota_live_contribution(1::smallint, id) FROM coupons WHERE usage_limit IS NOT NULL;
INSERT INTO quotas (kind, scope_id, quota_limit, used)
SELECT 2, id, usage_limit, quota_live_contribution(2::smallint, id) FROM campaigns WHERE usage_limit IS NOT NULL;
INSERT INTO quotas (kind, scope_id, quota_limit, used)
SELECT 3, id, round(budget * 100)::bigint, quota_live_contribution(3::smallint, id) FROM campaigns WHERE budget IS NOT NULL;

-- Takes up to p_want units (at least p_need when that many are free) for a live instance's
-- lease: never more than half the free units per instance holding some, so leases shrink
-- as the end nears. Answers what was granted, what is free after it, and what other
-- instances hold. A grant that finds nothing free while others hold units asks them back.
CREATE FUNCTION quota_grant(p_kind SMALLINT, p_scope BIGINT, p_instance TEXT, p_epoch BIGINT, p_want BIGINT, p_need BIGINT)
RETURNS TABLE (granted BIGINT, free BIGINT, held_elsewhere BIGINT, fenced BOOLEAN, limited BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    q quotas%ROWTYPE;
    own BIGINT;
    holders BIGINT;
    k BIGINT;
    f BIGINT;
BEGIN
    PERFORM 1 FROM quota_instances WHERE instance_id = p_instance AND epoch = p_epoch AND state = 'live' FOR SHARE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, true, true;
        RETURN;
    END IF;
    SELECT * INTO q FROM quotas WHERE kind = p_kind AND scope_id = p_scope FOR UPDATE;
    IF NOT FOUND OR q.quota_limit IS NULL THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, false, false;
        RETURN;
    END IF;
    SELECT coalesce(sum(l.held) FILTER (WHERE l.instance_id = p_instance AND l.epoch = p_epoch), 0),
           count(*) FILTER (WHERE l.held > 0 AND NOT (l.instance_id = p_instance AND l.epoch = p_epoch))
    INTO own, holders
    FROM quota_leases l WHERE l.kind = p_kind AND l.scope_id = p_scope;
    f := greatest(q.quota_limit - q.used - q.held, 0);
    k := least(p_want, greatest(ceil(f::numeric / (2 * (holders + 1)))::bigint, p_need), f);
    IF k > 0 THEN
        UPDATE quotas SET held = held + k WHERE kind = p_kind AND scope_id = p_scope;
        INSERT INTO quota_leases AS l (kind, scope_id, instance_id, epoch, held, granted)
        VALUES (p_kind, p_scope, p_instance, p_epoch, k, k)
        ON CONFLICT (kind, scope_id, instance_id, epoch)
        DO UPDATE SET held = l.held + k, granted = l.granted + k, updated_at = now();
    ELSIF q.held - own > 0 THEN
        UPDATE quotas SET reclaim_seq = nextval('quota_reclaim_seq') WHERE kind = p_kind AND scope_id = p_scope;
    END IF;
    RETURN QUERY SELECT k, f - k, q.held - own, false, true;
END $$;

-- Gives back up to p_units of a lease; answers how many went back.
CREATE FUNCTION quota_return(p_kind SMALLINT, p_scope BIGINT, p_instance TEXT, p_epoch BIGINT, p_units BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    h BIGINT;
    n BIGINT;
BEGIN
    -- Locks are taken quota row first, then lease, everywhere: never a deadlock.
    PERFORM 1 FROM quotas WHERE kind = p_kind AND scope_id = p_scope FOR UPDATE;
    SELECT held INTO h FROM quota_leases
    WHERE kind = p_kind AND scope_id = p_scope AND instance_id = p_instance AND epoch = p_epoch FOR UPDATE;
    n := least(coalesce(h, 0), p_units);
    IF n > 0 THEN
        UPDATE quota_leases SET held = held - n, updated_at = now()
        WHERE kind = p_kind AND scope_id = p_scope AND instance_id = p_instance AND epoch = p_epoch;
        UPDATE quotas SET held = held - n WHERE kind = p_kind AND scope_id = p_scope;
    END IF;
    RETURN n;
END $$;

-- Gives back everything the leases of an instance hold for the epochs up to p_epoch: at a
-- clean stop (after shipping everything), at a restart (after shipping the old journal),
-- or when an operator writes the instance off. Answers the units given back.
CREATE FUNCTION quota_settle(p_instance TEXT, p_epoch BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    l RECORD;
    total BIGINT := 0;
BEGIN
    PERFORM 1 FROM quotas q WHERE (q.kind, q.scope_id) IN (
        SELECT kind, scope_id FROM quota_leases WHERE instance_id = p_instance AND epoch <= p_epoch AND held > 0)
    ORDER BY q.kind, q.scope_id FOR UPDATE;
    FOR l IN SELECT kind, scope_id, epoch, held FROM quota_leases
             WHERE instance_id = p_instance AND epoch <= p_epoch AND held > 0
             ORDER BY kind, scope_id, epoch FOR UPDATE LOOP
        UPDATE quotas SET held = held - l.held WHERE kind = l.kind AND scope_id = l.scope_id;
        UPDATE quota_leases SET held = 0, updated_at = now()
        WHERE kind = l.kind AND scope_id = l.scope_id AND instance_id = p_instance AND epoch = l.epoch;
        total := total + l.held;
    END LOOP;
    DELETE FROM quota_leases WHERE instance_id = p_instance AND epoch < p_epoch AND held = 0;
    RETURN total;
END $$;

-- Applies shipped rows to the scopes, in the order given (kind, then scope: the callers
-- sort them, so two batches never wait on each other in a cycle): used moves by p_used; p_spent units leave the lease of
-- (p_instance, p_epoch) that paid for them. A lease that no longer holds them (written off)
-- cannot pay: the units are counted anyway and the overrun is answered.
CREATE FUNCTION quota_apply(p_kinds SMALLINT[], p_scopes BIGINT[], p_used BIGINT[], p_spent BIGINT[],
                            p_instance TEXT, p_epochs BIGINT[])
RETURNS BIGINT LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i INT;
    h BIGINT;
    paid BIGINT;
    overrun BIGINT := 0;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
        paid := 0;
        PERFORM 1 FROM quotas WHERE kind = p_kinds[i] AND scope_id = p_scopes[i] FOR UPDATE;
        IF p_spent[i] > 0 THEN
            SELECT held INTO h FROM quota_leases
            WHERE kind = p_kinds[i] AND scope_id = p_scopes[i] AND instance_id = p_instance AND epoch = p_epochs[i]
            FOR UPDATE;
            paid := least(coalesce(h, 0), p_spent[i]);
            IF paid > 0 THEN
                UPDATE quota_leases SET held = held - paid, updated_at = now()
                WHERE kind = p_kinds[i] AND scope_id = p_scopes[i] AND instance_id = p_instance AND epoch = p_epochs[i];
            END IF;
            IF paid < p_spent[i] THEN
                -- Only a use a lease paid for is ever counted as spent from one.
                PERFORM 1 FROM quotas WHERE kind = p_kinds[i] AND scope_id = p_scopes[i] AND quota_limit IS NOT NULL;
                IF FOUND THEN
                    overrun := overrun + p_spent[i] - paid;
                END IF;
            END IF;
        END IF;
        IF p_used[i] <> 0 OR paid <> 0 THEN
            UPDATE quotas SET used = used + p_used[i], held = held - paid
            WHERE kind = p_kinds[i] AND scope_id = p_scopes[i];
        END IF;
    END LOOP;
    RETURN overrun;
END $$;

-- A use PostgreSQL decides (API.md §6): under locks on the order and on each key counted,
-- checks the per-user limits, the bulk code's uses and the user's live holds against the
-- live rows, then inserts the row and spends the lease units the caller took for it, all in
-- one transaction. Answers 'taken' (with the row's revision), 'exists' (the order's row as
-- it stands: a replay, or another user's), 'fenced', or the limit that refused.
CREATE FUNCTION claim_use(
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
    RETURN QUERY SELECT 'taken'::text, new_rev, p_user, p_value, p_discount, p_hold, false;
END $$;

-- A use made by another instance, changed here: confirmed (a hold becomes a redemption) or
-- released, if it still is at revision p_rev. Answers the row as it stands after.
CREATE FUNCTION change_use(p_id UUID, p_rev INT, p_release BOOLEAN, p_at TIMESTAMPTZ)
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
        cents := round(cur.discount_applied * 100)::bigint;
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
