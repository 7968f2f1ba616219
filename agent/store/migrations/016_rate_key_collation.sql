-- Byte order for the text columns that lead pricelist_rates' identity key (migration 011), so the unique
-- index a large deck's swap builds (importer._Swap) sorts by memcmp with abbreviated keys instead of
-- calling the database's collation for every comparison: some 2.5 times faster at 3,000,000 rates
-- (loadtest/BENCHMARKS.md, session 13). Prefixes are digits and tags are identifiers, compared for
-- equality, so no answer changes. pricelist_tag is the partition key, whose type cannot be altered; the
-- columns before it decide nearly every comparison. The trigger of migration 012 names carrier_tag, so it
-- is made again around the change.
DROP TRIGGER pricelist_rates_references_updated ON pricelist_rates;
ALTER TABLE pricelist_rates
    ALTER COLUMN prefix TYPE text COLLATE "C",
    ALTER COLUMN carrier_tag TYPE text COLLATE "C";
CREATE TRIGGER pricelist_rates_references_updated BEFORE UPDATE OF tenant, pricelist_tag, carrier_tag
    ON pricelist_rates FOR EACH ROW
    WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.pricelist_tag IS DISTINCT FROM NEW.pricelist_tag
          OR OLD.carrier_tag IS DISTINCT FROM NEW.carrier_tag)
    EXECUTE FUNCTION pricelist_rates_check_updating();
