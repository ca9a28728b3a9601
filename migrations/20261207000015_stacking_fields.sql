-- Several codes on one order (API.md §10): a coupon's priority among the codes of an order
-- (higher first) and the classes of code it combines with (Shopify's two-way rule: two codes
-- combine only if each one's list holds the other's class). The defaults mean "as before": a
-- coupon combines with nothing, so an order keeps one code unless its coupons say otherwise.
ALTER TABLE coupons
    ADD COLUMN priority INT NOT NULL DEFAULT 0,
    ADD COLUMN combines_with TEXT[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT coupons_priority_range CHECK (priority BETWEEN -1000000 AND 1000000),
    ADD CONSTRAINT coupons_combines_with_known
        CHECK (combines_with <@ ARRAY['item', 'order', 'shipping']::text[] AND array_position(combines_with, NULL) IS NULL);
