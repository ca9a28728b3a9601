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
