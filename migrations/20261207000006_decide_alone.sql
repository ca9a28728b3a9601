-- One instance decides alone (API.md §6): while it is the only live instance of the
-- database it holds the row of quota_alone and decides every shape in memory, acknowledging
-- after its journal's fsync; nothing of it reaches PostgreSQL before its shipper does.
-- So no other instance may decide a limited use while that row stands:
--   - an instance that begins an epoch while another holds the row starts 'waiting': grants
--     and claims (which need 'live') refuse it, and it changes no use through PostgreSQL;
--   - the holder gives the row up only once everything it decided alone is shipped, and that
--     same transaction makes every waiting instance live;
--   - the row is taken only while no other instance is live or waiting, with the holder's
--     own leases settled (it counts totals in memory while alone), under the same lock as
--     the start of an epoch, so no instance begins unseen;
--   - a write-off of the holder waits for its alone_timeout (it decides alone for half of it
--     without PostgreSQL, to ride an outage), and frees the row.
-- The row survives PostgreSQL restarts; no clock decides who holds it.
ALTER TABLE quota_instances DROP CONSTRAINT quota_instances_state_known,
    ADD CONSTRAINT quota_instances_state_known CHECK (state IN ('live', 'waiting', 'stopped', 'written_off'));

CREATE TABLE quota_alone (
    singleton     BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    instance_id   TEXT NOT NULL,
    epoch         BIGINT NOT NULL,
    alone_timeout INTERVAL NOT NULL,
    taken_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The lock under which an epoch begins and the row is taken or given up.
CREATE FUNCTION quota_alone_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('coupon-engine decides alone', 0))
$$;

-- A new epoch of p_instance from DATA_DIR p_dir: 'waiting' while another instance decides
-- alone, else 'live'. Answers the epoch and its state.
CREATE FUNCTION quota_begin_epoch(p_instance TEXT, p_dir UUID, p_identity_timeout FLOAT8)
RETURNS TABLE (epoch BIGINT, state TEXT) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s TEXT;
    e BIGINT;
BEGIN
    PERFORM quota_alone_lock();
    s := CASE WHEN EXISTS (SELECT 1 FROM quota_alone a WHERE a.instance_id <> p_instance) THEN 'waiting' ELSE 'live' END;
    INSERT INTO quota_instances AS q (instance_id, data_dir_id, identity_timeout, state)
    VALUES (p_instance, p_dir, p_identity_timeout * interval '1 second', s)
    ON CONFLICT (instance_id) DO UPDATE SET epoch = q.epoch + 1, state = s, started_at = now(),
        stopped_at = NULL, seen_at = now(), data_dir_id = p_dir, identity_timeout = EXCLUDED.identity_timeout
    RETURNING q.epoch INTO e;
    RETURN QUERY SELECT e, s;
END $$;

-- What an instance needs to choose between deciding alone and sharing: its own state,
-- whether any other instance is live or waiting, and who holds the row.
CREATE FUNCTION quota_mode(p_instance TEXT, p_epoch BIGINT)
RETURNS TABLE (own_state TEXT, others BOOLEAN, alone_instance TEXT, alone_epoch BIGINT) LANGUAGE sql STABLE AS $$
    SELECT (SELECT CASE WHEN q.epoch = p_epoch THEN q.state ELSE 'fenced' END
              FROM quota_instances q WHERE q.instance_id = p_instance),
           EXISTS (SELECT 1 FROM quota_instances q WHERE q.instance_id <> p_instance AND q.state IN ('live', 'waiting')),
           (SELECT a.instance_id FROM quota_alone a),
           (SELECT a.epoch FROM quota_alone a)
$$;

-- Takes the row for (p_instance, p_epoch) if it is live and no other instance is live or
-- waiting; its leases go back (it counts in memory from now on). Answers the feed position
-- every use so far has (the instance decides once its feed has read up to it), or NULL if
-- another instance is there. Asked again (an answer lost), it answers the same way.
CREATE FUNCTION quota_take_alone(p_instance TEXT, p_epoch BIGINT, p_alone_timeout FLOAT8)
RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    PERFORM quota_alone_lock();
    PERFORM 1 FROM quota_instances q WHERE q.instance_id = p_instance AND q.epoch = p_epoch AND q.state = 'live';
    IF NOT FOUND
       OR EXISTS (SELECT 1 FROM quota_instances q WHERE q.instance_id <> p_instance AND q.state IN ('live', 'waiting'))
       OR EXISTS (SELECT 1 FROM quota_alone a WHERE a.instance_id <> p_instance) THEN
        RETURN NULL;
    END IF;
    PERFORM quota_settle(p_instance, p_epoch);
    INSERT INTO quota_alone AS a (instance_id, epoch, alone_timeout)
    VALUES (p_instance, p_epoch, p_alone_timeout * interval '1 second')
    ON CONFLICT (singleton) DO UPDATE SET instance_id = EXCLUDED.instance_id, epoch = EXCLUDED.epoch,
        alone_timeout = EXCLUDED.alone_timeout, taken_at = now();
    RETURN (SELECT coalesce(max(u.seq), 0) FROM coupon_usage u);
END $$;

-- Gives up the row if p_instance holds it (any epoch: a restart gives up its last run's
-- once that run's journal is shipped), and lets every waiting instance decide.
CREATE FUNCTION quota_release_alone(p_instance TEXT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM quota_alone_lock();
    DELETE FROM quota_alone a WHERE a.instance_id = p_instance;
    IF NOT EXISTS (SELECT 1 FROM quota_alone) THEN
        UPDATE quota_instances SET state = 'live' WHERE state = 'waiting';
    END IF;
END $$;
