-- A code starting with ~BATCH- belongs to the rule of a batch of codes (db::batches names
-- them ~BATCH-<id>): no other coupon may take one, whoever writes it (API.md §4).
ALTER TABLE coupons ADD CONSTRAINT coupons_rule_code_reserved
    CHECK (batch_id IS NOT NULL OR code NOT LIKE '~BATCH-%');
