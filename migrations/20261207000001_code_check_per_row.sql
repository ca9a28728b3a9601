-- A bulk UPDATE of coupons was quadratic: the statement trigger joined its `new_rows` and
-- `old_rows` transition tables, which carry no statistics, so PostgreSQL chose a nested loop
-- (10,000 rows 19.8 s, 100,000 rows never). The check now runs per row, and only for rows whose
-- code changed: the WHEN clause is evaluated by the executor without calling PL/pgSQL, so an
-- update that changes no code costs nothing here, and one that does costs one index probe a row.
-- Pairing OLD with NEW per row also stays right when a statement changes ids.
DROP TRIGGER coupons_code_unique_on_update ON coupons;

CREATE FUNCTION coupons_code_unique_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM codes_lock();
    IF EXISTS (SELECT 1 FROM batch_codes b WHERE b.code = NEW.code COLLATE "C")
       OR code_in_generated_shape(NEW.code) THEN
        RAISE EXCEPTION 'code % is a bulk code', NEW.code USING ERRCODE = 'unique_violation',
            CONSTRAINT = 'coupons_code_key';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER coupons_code_unique_on_update AFTER UPDATE OF code ON coupons
    FOR EACH ROW WHEN (NEW.batch_id IS NULL AND OLD.code IS DISTINCT FROM NEW.code)
    EXECUTE FUNCTION coupons_code_unique_on_update();

-- The shared function now serves inserts only.
CREATE OR REPLACE FUNCTION coupons_code_unique_across_batches() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    taken TEXT;
BEGIN
    PERFORM codes_lock();
    SELECT n.code INTO taken FROM new_rows n
        WHERE n.batch_id IS NULL
          AND (EXISTS (SELECT 1 FROM batch_codes b WHERE b.code = n.code COLLATE "C")
               OR code_in_generated_shape(n.code))
        LIMIT 1;
    IF taken IS NOT NULL THEN
        RAISE EXCEPTION 'code % is a bulk code', taken USING ERRCODE = 'unique_violation',
            CONSTRAINT = 'coupons_code_key';
    END IF;
    RETURN NULL;
END $$;
