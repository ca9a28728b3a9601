-- The reasons of carts (API.md §9). Their codes follow the twelve before them: a code, once
-- given, never changes (Reason::log_code), whatever the order in which the rules check.
INSERT INTO validation_reasons (code, name) VALUES
    (13, 'CURRENCY_NOT_SUPPORTED'), (14, 'ITEMS_REQUIRED'), (15, 'NO_ELIGIBLE_ITEMS'), (16, 'MIN_QUANTITY_NOT_MET');
