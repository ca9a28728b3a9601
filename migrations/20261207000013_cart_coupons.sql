-- Coupons that target carts (API.md §9): what a coupon's discount is aimed at, which lines it
-- applies to, how many units it needs, what its minimum is compared with, the new kinds, and
-- its currencies. Every column has a default that means "as before", so rows written by other
-- SQL clients keep working, and adding them rewrites no row.
--
-- `scope`, `bxgy` and `currency_options` hold the admin API's JSON shapes (camelCase); the
-- service reads them with the admin API's checks, and a row they refuse is an impossible row,
-- like one whose discount_type it does not know. Amounts in `discount_value`, `max_discount` and
-- `min_order_value` keep at most 2 decimals in every currency; `currency_options` amounts take
-- their own currency's decimals.
ALTER TABLE coupons
    ADD COLUMN target TEXT NOT NULL DEFAULT 'order',
    ADD COLUMN scope JSONB NULL,
    ADD COLUMN min_quantity INT NULL,
    ADD COLUMN min_order_basis TEXT NOT NULL DEFAULT 'order',
    ADD COLUMN allocation TEXT NOT NULL DEFAULT 'across',
    ADD COLUMN bxgy JSONB NULL,
    ADD COLUMN currency TEXT NULL,
    ADD COLUMN currency_options JSONB NULL,
    DROP CONSTRAINT coupons_discount_type_known,
    ADD CONSTRAINT coupons_discount_type_known
        CHECK (discount_type IN ('percentage', 'fixed', 'fixed_price', 'buy_x_get_y', 'free_shipping')),
    ADD CONSTRAINT coupons_target_known CHECK (target IN ('order', 'items', 'shipping')),
    ADD CONSTRAINT coupons_min_order_basis_known CHECK (min_order_basis IN ('order', 'eligible')),
    ADD CONSTRAINT coupons_allocation_known
        CHECK (allocation = 'across' OR (allocation = 'each' AND discount_type = 'fixed')),
    ADD CONSTRAINT coupons_min_quantity_range CHECK (min_quantity BETWEEN 1 AND 1000000),
    ADD CONSTRAINT coupons_bxgy_for_its_type CHECK ((discount_type = 'buy_x_get_y') = (bxgy IS NOT NULL)),
    ADD CONSTRAINT coupons_currency_format CHECK (currency ~ '^[A-Z]{3}$'),
    ADD CONSTRAINT coupons_json_objects CHECK (
        (scope IS NULL OR jsonb_typeof(scope) = 'object')
        AND (bxgy IS NULL OR jsonb_typeof(bxgy) = 'object')
        AND (currency_options IS NULL OR jsonb_typeof(currency_options) = 'object'));
