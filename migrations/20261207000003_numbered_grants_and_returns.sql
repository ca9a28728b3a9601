-- A return of lease units whose statement committed but whose answer was lost (a cut link)
-- was taken by the instance as failed: it kept the units as its own and sold them, while
-- PostgreSQL had freed them for the others (CI sold 61 of 60). A return now carries a number,
-- one after the other per lease, and the instance holds the units aside until PostgreSQL has
-- answered for that number: asking again with the same number is answered from what the first
-- application did, never applied twice.
ALTER TABLE quota_leases
    ADD COLUMN return_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN return_units BIGINT NOT NULL DEFAULT 0;

-- The shipper's refund of what a use that did not land took happens inside its transaction,
-- with no answer to lose: it keeps the unnumbered form, under a name of its own.
ALTER FUNCTION quota_return(SMALLINT, BIGINT, TEXT, BIGINT, BIGINT) RENAME TO quota_refund;

-- Gives back up to p_units of a lease as its return number p_seq; answers how many went
-- (for a number already applied, how many went then).
CREATE FUNCTION quota_return(p_kind SMALLINT, p_scope BIGINT, p_instance TEXT, p_epoch BIGINT, p_units BIGINT,
                             p_seq BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    l quota_leases%ROWTYPE;
    n BIGINT;
BEGIN
    -- Locks are taken quota row first, then lease, everywhere: never a deadlock.
    PERFORM 1 FROM quotas WHERE kind = p_kind AND scope_id = p_scope FOR UPDATE;
    SELECT * INTO l FROM quota_leases
    WHERE kind = p_kind AND scope_id = p_scope AND instance_id = p_instance AND epoch = p_epoch FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF l.return_seq >= p_seq THEN
        RETURN l.return_units;
    END IF;
    n := least(l.held, p_units);
    UPDATE quota_leases SET held = held - n, return_seq = p_seq, return_units = n, updated_at = now()
    WHERE kind = p_kind AND scope_id = p_scope AND instance_id = p_instance AND epoch = p_epoch;
    IF n > 0 THEN
        UPDATE quotas SET held = held - n WHERE kind = p_kind AND scope_id = p_scope;
    END IF;
    RETURN n;
END $$;

-- The same for grants: a grant that committed with its answer lost left its units in the
-- instance's lease, unknown to the instance, for as long as it ran (a simulated cluster found
-- it: the last unit of a campaign unsellable, and a false "limit reached"). A grant now carries
-- a number too, and one asked again under its number answers what it granted then.
ALTER TABLE quota_leases
    ADD COLUMN grant_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN grant_units BIGINT NOT NULL DEFAULT 0;

DROP FUNCTION quota_grant(SMALLINT, BIGINT, TEXT, BIGINT, BIGINT, BIGINT);

-- Takes up to p_want units (at least p_need when that many are free) for a live instance's
-- lease as its grant number p_seq: never more than half the free units per instance holding
-- some, so leases shrink as the end nears. Answers what was granted (for a number already
-- applied, what was granted then), what is free after it, and what other instances hold. A
-- grant that finds nothing free while others hold units asks them back.
CREATE FUNCTION quota_grant(p_kind SMALLINT, p_scope BIGINT, p_instance TEXT, p_epoch BIGINT, p_want BIGINT, p_need BIGINT,
                            p_seq BIGINT)
RETURNS TABLE (granted BIGINT, free BIGINT, held_elsewhere BIGINT, fenced BOOLEAN, limited BOOLEAN)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    q quotas%ROWTYPE;
    l quota_leases%ROWTYPE;
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
    SELECT coalesce(sum(x.held) FILTER (WHERE x.instance_id = p_instance AND x.epoch = p_epoch), 0),
           count(*) FILTER (WHERE x.held > 0 AND NOT (x.instance_id = p_instance AND x.epoch = p_epoch))
    INTO own, holders
    FROM quota_leases x WHERE x.kind = p_kind AND x.scope_id = p_scope;
    f := greatest(q.quota_limit - q.used - q.held, 0);
    SELECT * INTO l FROM quota_leases
    WHERE kind = p_kind AND scope_id = p_scope AND instance_id = p_instance AND epoch = p_epoch FOR UPDATE;
    IF FOUND AND l.grant_seq >= p_seq THEN
        RETURN QUERY SELECT l.grant_units, f, q.held - own, false, true;
        RETURN;
    END IF;
    k := least(p_want, greatest(ceil(f::numeric / (2 * (holders + 1)))::bigint, p_need), f);
    IF k > 0 THEN
        UPDATE quotas SET held = held + k WHERE kind = p_kind AND scope_id = p_scope;
        INSERT INTO quota_leases AS x (kind, scope_id, instance_id, epoch, held, granted, grant_seq, grant_units)
        VALUES (p_kind, p_scope, p_instance, p_epoch, k, k, p_seq, k)
        ON CONFLICT (kind, scope_id, instance_id, epoch)
        DO UPDATE SET held = x.held + k, granted = x.granted + k, grant_seq = p_seq, grant_units = k, updated_at = now();
    ELSE
        UPDATE quota_leases SET grant_seq = p_seq, grant_units = 0
        WHERE kind = p_kind AND scope_id = p_scope AND instance_id = p_instance AND epoch = p_epoch;
        IF q.held - own > 0 THEN
            UPDATE quotas SET reclaim_seq = nextval('quota_reclaim_seq') WHERE kind = p_kind AND scope_id = p_scope;
        END IF;
    END IF;
    RETURN QUERY SELECT k, f - k, q.held - own, false, true;
END $$;
