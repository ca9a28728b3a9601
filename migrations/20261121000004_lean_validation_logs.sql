-- validation_logs takes a row per validation, tens of thousands a second, on the same cores
-- as the service: every index costs a B-tree insert per row. Keep only what a query uses.
-- "Recent validations" reads the newest ids (the identity grows in insert order); the
-- per-code statistics use validation_logs_coupon_code_idx. Nothing reads by user_id.
DROP INDEX validation_logs_validated_at_idx;
DROP INDEX validation_logs_user_id_idx;
