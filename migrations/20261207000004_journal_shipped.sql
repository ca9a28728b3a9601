-- How far each DATA_DIR's journal has reached PostgreSQL: the position of the last record a
-- shipper's transaction wrote, in that same transaction. A batch shipped again (its commit's
-- answer lost, or the checkpoint file not written before a crash) skips what is at or before
-- it, so every effect of a record happens once: row revisions made rows idempotent, but the
-- refund of a use that did not land was applied again on every re-shipment, taking lease
-- units that paid for real uses (a simulated cluster with a lossy link found it: one unit
-- counted without a lease to pay for it).
CREATE TABLE journal_shipped (
    data_dir_id UUID PRIMARY KEY,
    position    BIGINT NOT NULL
);
