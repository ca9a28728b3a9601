-- The newest validation of each code, hour and outcome, kept with its count; with an index
-- on `hour` the newest row of the whole log is found without reading the log, and the
-- recent-validations read looks only at the rows just before it. Counts written before
-- this column existed have none: readers take the end of their hour instead.
ALTER TABLE validation_counts ADD COLUMN last_at TIMESTAMPTZ;
CREATE INDEX validation_counts_hour ON validation_counts (hour);
