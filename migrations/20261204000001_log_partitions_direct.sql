-- The validation log's partitions made cheaper to fill and kept quick to read (API.md §7;
-- measured in ARCHITECTURE.md, "Performance work"):
--
-- 1. The writer COPYs each day's rows straight into that day's partition instead of into
--    `validation_log`, so PostgreSQL routes no row. The partition's name is this file's
--    fact; the writer asks `validation_log_partition` for it.
-- 2. The service summarizes the BRIN ranges of the days' partitions as they fill
--    (`validation_log_summarize`, called every second), instead of autosummarize: at tens of
--    thousands of rows a second a partition fills ~100 ranges a second, autovacuum's queue
--    of work items holds 256, and every request past it was dropped with a line in the
--    server's log (200,000 lines in an afternoon of load tests), leaving the newest ranges
--    unsummarized until the next vacuum: the recent-validations read then scanned all of
--    them (13,786 buffers for a 1-second window instead of 2,083).
-- 3. No insert-driven autovacuum on the log's partitions. The log is append-only and read
--    through BRIN bitmap scans, which use neither the visibility map nor anything else a
--    vacuum of unchanged rows leaves; its summaries are made as in 2; a partition is dropped
--    whole after retention_days. Inserts alone made autovacuum read and dirty every page once
--    more (0.27 µs of CPU a row, before writing the pages again). Freezing is left to the
--    anti-wraparound vacuum, which comes only to partitions older than
--    autovacuum_freeze_max_age transactions (200 million by default; the writer uses one per
--    batch of up to 5,000 rows). The counts partitions are updated in place and keep the
--    default.

CREATE OR REPLACE FUNCTION validation_log_partition(day DATE) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT 'validation_log_' || to_char(day, 'YYYYMMDD')
$$;

-- The BRIN index of a log partition (each has the one `validation_log` declares).
CREATE OR REPLACE FUNCTION validation_log_brin(part REGCLASS) RETURNS REGCLASS LANGUAGE sql STABLE AS $$
    SELECT i.indexrelid::regclass FROM pg_index i
    JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
    WHERE i.indrelid = part AND a.amname = 'brin'
$$;

-- Makes a log partition as 1–3 above want it.
CREATE OR REPLACE FUNCTION validation_log_tune(part REGCLASS) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s SET (autovacuum_vacuum_insert_threshold = -1)', part);
    EXECUTE format('ALTER INDEX %s SET (autosummarize = off)', validation_log_brin(part));
END $$;

CREATE OR REPLACE FUNCTION validation_log_add_days(first DATE, last DATE) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    day DATE := first;
    created INTEGER := 0;
    lower TIMESTAMPTZ;
    upper TIMESTAMPTZ;
BEGIN
    WHILE day <= last LOOP
        lower := day::timestamp AT TIME ZONE 'UTC';
        upper := (day + 1)::timestamp AT TIME ZONE 'UTC';
        IF to_regclass(validation_log_partition(day)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF validation_log FOR VALUES FROM (%L) TO (%L)',
                           validation_log_partition(day), lower, upper);
            PERFORM validation_log_tune(validation_log_partition(day)::regclass);
            created := created + 1;
        END IF;
        IF to_regclass('validation_counts_' || to_char(day, 'YYYYMMDD')) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF validation_counts FOR VALUES FROM (%L) TO (%L)',
                           'validation_counts_' || to_char(day, 'YYYYMMDD'), lower, upper);
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END $$;

-- Summarizes the BRIN ranges of `day`'s log partition from the range holding `from_block`
-- to its end (a range already summarized costs a look-up; the last, partial one is
-- summarized too, and inserts after that keep its summary up to date). Returns the
-- partition's size in blocks, where the next call may start; 0 if the day has no partition.
-- A partition smaller than `from_block` (emptied, or dropped and made again) is started
-- over. Another session summarizing it (another instance) or vacuuming it makes this call
-- skip the day rather than wait: the next one, a second later, picks up from the same block.
CREATE OR REPLACE FUNCTION validation_log_summarize(day DATE, from_block BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    part REGCLASS := to_regclass(validation_log_partition(day));
    brin REGCLASS;
    per_range BIGINT;
    blocks BIGINT;
BEGIN
    IF part IS NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE NOWAIT', part);
    EXCEPTION WHEN lock_not_available THEN
        RETURN from_block;
    END;
    brin := validation_log_brin(part);
    SELECT coalesce((SELECT option_value::bigint FROM pg_options_to_table(c.reloptions)
                     WHERE option_name = 'pages_per_range'), 128)
        INTO per_range FROM pg_class c WHERE c.oid = brin;
    blocks := pg_relation_size(part) / current_setting('block_size')::bigint;
    IF from_block > blocks THEN
        from_block := 0;
    END IF;
    PERFORM brin_summarize_range(brin, b)
        FROM generate_series(from_block - from_block % per_range, blocks - 1, per_range) AS b;
    RETURN blocks;
END $$;

DO $$
DECLARE
    part RECORD;
BEGIN
    FOR part IN SELECT inhrelid::regclass AS name FROM pg_inherits WHERE inhparent = 'validation_log'::regclass LOOP
        PERFORM validation_log_tune(part.name);
    END LOOP;
END $$;
