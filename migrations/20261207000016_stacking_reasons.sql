-- The reasons of several codes on one order (API.md §10), logged one row per code: a code that
-- passed alone but was not taken with the others, and one taken with nothing left to take off.
INSERT INTO validation_reasons (code, name) VALUES (17, 'NOT_COMBINABLE'), (18, 'NO_EFFECT');
