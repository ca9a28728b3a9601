-- Validation log rows that did not fit the in-memory queue are spilled to the journal and
-- shipped later; their journal position makes a replayed shipment harmless. Rows written
-- directly leave it NULL and stay out of the (partial) index.
ALTER TABLE validation_logs ADD COLUMN journal_pos BIGINT NULL;
CREATE UNIQUE INDEX validation_logs_journal_pos_key ON validation_logs (journal_pos) WHERE journal_pos IS NOT NULL;
