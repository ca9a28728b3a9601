-- The validation log at internet scale (API.md §7). At tens of thousands of validations a
-- second the log is the heaviest thing the service does, so its rows are made cheap to
-- ingest: narrow (money in cents, the reason as a small code, the response time in µs),
-- in daily partitions that retention drops whole, with a BRIN index on the time only (a few
-- pages a day) and no B-tree at all. Per-code statistics come from per-hour counts the
-- writer adds in the same transaction as the rows; the §2 columns stay readable through the
-- view `validation_logs`.

CREATE TABLE validation_reasons (
    code SMALLINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
-- Code = position in Reason::ALL + 1 (a test checks the two agree).
INSERT INTO validation_reasons (code, name) VALUES
    (1, 'COUPON_NOT_FOUND'), (2, 'COUPON_INACTIVE'), (3, 'COUPON_EXPIRED'), (4, 'COUPON_NOT_YET_VALID'),
    (5, 'COUPON_NOT_FOR_USER'), (6, 'MIN_ORDER_VALUE_NOT_MET'), (7, 'USAGE_LIMIT_REACHED'),
    (8, 'USER_USAGE_LIMIT_REACHED'), (9, 'CAMPAIGN_LIMIT_REACHED'), (10, 'CAMPAIGN_USER_LIMIT_REACHED'),
    (11, 'CAMPAIGN_BUDGET_EXHAUSTED'), (12, 'ORDER_ALREADY_REDEEMED');

-- Ids are unique, not gap-free or ordered across sessions: a cache of 1,000 saves a
-- sequence update per row. "Recent" orders by time.
CREATE SEQUENCE validation_log_id_seq CACHE 1000;

-- Fixed-width columns first (no padding), then the text.
CREATE TABLE validation_log (
    validated_at     TIMESTAMPTZ NOT NULL,
    id               BIGINT NOT NULL DEFAULT nextval('validation_log_id_seq'),
    coupon_id        BIGINT NULL,
    order_value      BIGINT NOT NULL,
    discount         BIGINT NOT NULL,
    final_amount     BIGINT NOT NULL,
    -- Set only for rows that spilled into the journal (see validation_log_spilled).
    journal_pos      BIGINT NULL,
    response_time_us INTEGER NOT NULL,
    -- NULL: valid; else validation_reasons.code.
    reason           SMALLINT NULL,
    ip_address       INET NULL,
    coupon_code      TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    order_id         TEXT NULL,
    user_agent       TEXT NULL
) PARTITION BY RANGE (validated_at);
ALTER SEQUENCE validation_log_id_seq OWNED BY validation_log.id;
CREATE INDEX validation_log_validated_at_brin ON validation_log USING brin (validated_at)
    WITH (pages_per_range = 16, autosummarize = on);

-- Validations per code, hour and outcome (reason 0: valid).
CREATE TABLE validation_counts (
    hour        TIMESTAMPTZ NOT NULL,
    coupon_code TEXT NOT NULL,
    reason      SMALLINT NOT NULL,
    count       BIGINT NOT NULL,
    PRIMARY KEY (coupon_code, hour, reason)
) PARTITION BY RANGE (hour);

-- Journal positions of spilled rows already inserted: a spilled row is shipped at least
-- once, inserted exactly once. Small (outages only); retention trims it.
CREATE TABLE validation_log_spilled (
    journal_pos BIGINT PRIMARY KEY,
    day         DATE NOT NULL
);

-- Creates the daily partitions of both tables for the UTC days first..last (inclusive).
CREATE FUNCTION validation_log_add_days(first DATE, last DATE) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    day DATE := first;
    created INTEGER := 0;
    suffix TEXT;
    lower TIMESTAMPTZ;
    upper TIMESTAMPTZ;
BEGIN
    WHILE day <= last LOOP
        suffix := to_char(day, 'YYYYMMDD');
        lower := day::timestamp AT TIME ZONE 'UTC';
        upper := (day + 1)::timestamp AT TIME ZONE 'UTC';
        IF to_regclass('validation_log_' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF validation_log FOR VALUES FROM (%L) TO (%L)',
                           'validation_log_' || suffix, lower, upper);
            created := created + 1;
        END IF;
        IF to_regclass('validation_counts_' || suffix) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF validation_counts FOR VALUES FROM (%L) TO (%L)',
                           'validation_counts_' || suffix, lower, upper);
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END $$;

-- Drops the partitions of days before `keep_from` (whole tables, never DELETE) and the
-- spilled positions of those days; returns how many days of rows were dropped.
CREATE FUNCTION validation_log_drop_before(keep_from DATE) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    part RECORD;
    dropped INTEGER := 0;
BEGIN
    FOR part IN
        SELECT c.relname, p.relname AS parent FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('validation_log', 'validation_counts')
          AND c.relname ~ '_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < keep_from
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        IF part.parent = 'validation_log' THEN
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM validation_log_spilled WHERE day < keep_from;
    RETURN dropped;
END $$;

-- The rows logged so far move into the new table, in partitions for their days.
DO $$
DECLARE
    first DATE;
    last DATE;
BEGIN
    SELECT min(validated_at AT TIME ZONE 'UTC')::date, max(validated_at AT TIME ZONE 'UTC')::date
        INTO first, last FROM validation_logs;
    PERFORM validation_log_add_days(least(first, (now() AT TIME ZONE 'UTC')::date - 1),
                                    greatest(last, (now() AT TIME ZONE 'UTC')::date + 2));
END $$;

INSERT INTO validation_log (validated_at, coupon_id, order_value, discount, final_amount, journal_pos,
                            response_time_us, reason, ip_address, coupon_code, user_id, order_id, user_agent)
SELECT l.validated_at, l.coupon_id, (l.order_value * 100)::bigint, (l.discount_applied * 100)::bigint,
       (l.final_amount * 100)::bigint, l.journal_pos, coalesce((l.response_time_ms * 1000)::integer, 0),
       r.code, l.ip_address, l.coupon_code, l.user_id, l.order_id, l.user_agent
FROM validation_logs l LEFT JOIN validation_reasons r ON r.name = l.validation_reason
ORDER BY l.id;

INSERT INTO validation_counts (hour, coupon_code, reason, count)
SELECT date_trunc('hour', validated_at), coupon_code, coalesce(reason, 0), count(*)
FROM validation_log GROUP BY 1, 2, 3;

INSERT INTO validation_log_spilled (journal_pos, day)
SELECT journal_pos, (validated_at AT TIME ZONE 'UTC')::date FROM validation_log WHERE journal_pos IS NOT NULL;

DROP TABLE validation_logs;

-- The columns of API.md §2, as they always were.
CREATE VIEW validation_logs AS
SELECT l.id,
       l.coupon_code,
       l.coupon_id,
       l.user_id,
       l.order_id,
       round(l.order_value / 100.0, 2) AS order_value,
       l.reason IS NULL AS is_valid,
       r.name AS validation_reason,
       round(l.discount / 100.0, 2) AS discount_applied,
       round(l.final_amount / 100.0, 2) AS final_amount,
       l.ip_address,
       l.user_agent,
       round(l.response_time_us / 1000.0, 3)::numeric(12, 3) AS response_time_ms,
       l.validated_at
FROM validation_log l LEFT JOIN validation_reasons r ON r.code = l.reason;
