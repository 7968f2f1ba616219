-- The catalog (deck) version a call record was priced on: the change-log position of the catalog its plan
-- read (cache/call.py PLANNED_ON, kept in the call's meta), or, once a rerate changed the fee, the version
-- the rerate priced it on. NULL for records written before it was kept. Shown in the record's `explain`.
ALTER TABLE transactions ADD COLUMN catalog_version bigint;
