-- Room in the pages of pricelist_rates' partitions for updates in place (store/importer.RATE_FILLFACTOR).
--
-- A merge that changes many rates of a pricelist (a carrier's deck replaced with new prices) updates them
-- by id. On full pages each new row version goes to another page, with an entry in both unique indexes;
-- with free room on its page it stays there, a HOT update, which leaves the indexes alone (no indexed
-- column changes), and the dead versions are pruned as the page is next visited. A swapped-in deck
-- (importer._Swap) is copied into a table created with the same fillfactor. Setting it here touches no
-- row: pages written from now on keep the room; a partition's existing pages get it when a large deck is
-- swapped in for it (or by VACUUM FULL).

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'pricelist_rates'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 50)', part);
    END LOOP;
END $$;
