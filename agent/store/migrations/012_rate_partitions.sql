-- Large deck imports (agent/store/importer.py): a pricelist's rates are a partition of their own.
--
-- Inserting two million rates into the indexed table was most of a deck import (its two unique indexes
-- kept row by row: 30-42 s). A large import now loads its pricelist's rates into a fresh table with COPY,
-- indexes it in one sort each and swaps it in for the pricelist's partition in a short transaction
-- (DETACH the old one, ATTACH the new one; importer._swap). A pricelist without a partition of its own
-- (created by GraphQL or a catalog import, never given a large deck) keeps its rates in the default one.
--
-- A swap is not MVCC-safe: a repeatable-read reader whose snapshot predates it would find the new table,
-- whose rows it cannot see. Such readers (deck builds, catalog loads and catch-ups) take
-- `LOCK TABLE pricelist_rates IN ACCESS SHARE MODE` before their first query (store/changes.lock_rates),
-- which DETACH (ACCESS EXCLUSIVE) waits for, and which waits for a swap under way.
--
-- The keys: the primary key holds the partition column (a partitioned table's unique keys must), ids stay
-- unique uuids; the identity key starts with the prefix, which sorts an index build of a deck twice as fast
-- as starting with the tenant and pricelist (one value for the whole deck, compared on every step).

CREATE FUNCTION pricelist_rates_partition(tag text) RETURNS text LANGUAGE sql IMMUTABLE AS
    $$ SELECT 'pricelist_rates_' || left(md5(tag), 20) $$;

ALTER TABLE pricelist_rates RENAME TO pricelist_rates_unpartitioned;
ALTER INDEX pricelist_rates_pkey RENAME TO pricelist_rates_unpartitioned_pkey;
ALTER INDEX pricelist_rates_identity_key RENAME TO pricelist_rates_unpartitioned_identity_key;

CREATE TABLE pricelist_rates (LIKE pricelist_rates_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY LIST (pricelist_tag);
ALTER TABLE pricelist_rates
    ADD CONSTRAINT pricelist_rates_pkey PRIMARY KEY (id, pricelist_tag),
    ADD CONSTRAINT pricelist_rates_identity_key
        UNIQUE (prefix, carrier_tag, pricelist_tag, tenant, source_prefix, weekdays, time_start, time_end);
CREATE TABLE pricelist_rates_default PARTITION OF pricelist_rates DEFAULT;

DO $$
DECLARE
    tag text;
BEGIN
    FOR tag IN SELECT DISTINCT pricelist_tag FROM pricelist_rates_unpartitioned LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF pricelist_rates FOR VALUES IN (%L)',
                       pricelist_rates_partition(tag), tag);
    END LOOP;
END $$;

INSERT INTO pricelist_rates SELECT * FROM pricelist_rates_unpartitioned;
DROP TABLE pricelist_rates_unpartitioned;  -- and its triggers; the functions of migration 004 stay

CREATE TRIGGER pricelist_rates_references_inserted AFTER INSERT ON pricelist_rates
    REFERENCING NEW TABLE AS new_rates FOR EACH STATEMENT EXECUTE FUNCTION pricelist_rates_check_inserted();
-- An update that moves a rate to another partition (another pricelist) is a delete and an insert, for which
-- PostgreSQL fires no AFTER UPDATE row trigger: the references of an update are checked before it, where
-- every update of the row fires. Migration 004's pricelist_rates_check_updated returns NULL (an AFTER trigger's
-- answer, which a BEFORE trigger would take as "skip the update"), so its checks are restated here as one
-- function per reference kind's arguments, returning the row.
CREATE FUNCTION pricelist_rates_check_updating() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pricelist_rates_check_references(NEW.tenant, NEW.pricelist_tag, NEW.carrier_tag,
        (NEW.tenant, NEW.carrier_tag) IS DISTINCT FROM (OLD.tenant, OLD.carrier_tag),
        (NEW.tenant, NEW.pricelist_tag) IS DISTINCT FROM (OLD.tenant, OLD.pricelist_tag));
    RETURN NEW;
END $$;

CREATE FUNCTION pricelist_rates_check_references(tenant_ text, pricelist text, carrier text, of_carrier boolean,
                                                 of_pricelist boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF of_carrier THEN
        PERFORM 1 FROM carriers c WHERE c.tenant = tenant_ AND c.carrier_tag = carrier FOR KEY SHARE OF c;
        IF NOT FOUND THEN
            RAISE foreign_key_violation USING
                MESSAGE = 'insert or update on table "pricelist_rates" violates foreign key constraint'
                          ' "pricelist_rates_tenant_carrier_tag_fkey"',
                DETAIL = format('Key (tenant, carrier_tag)=(%s, %s) is not present in table "carriers".',
                                tenant_, carrier),
                CONSTRAINT = 'pricelist_rates_tenant_carrier_tag_fkey', TABLE = 'pricelist_rates';
        END IF;
    END IF;
    IF of_pricelist THEN
        PERFORM 1 FROM pricelists p WHERE p.tenant = tenant_ AND p.pricelist_tag = pricelist FOR KEY SHARE OF p;
        IF NOT FOUND THEN
            RAISE foreign_key_violation USING
                MESSAGE = 'insert or update on table "pricelist_rates" violates foreign key constraint'
                          ' "pricelist_rates_tenant_pricelist_tag_fkey"',
                DETAIL = format('Key (tenant, pricelist_tag)=(%s, %s) is not present in table "pricelists".',
                                tenant_, pricelist),
                CONSTRAINT = 'pricelist_rates_tenant_pricelist_tag_fkey', TABLE = 'pricelist_rates';
        END IF;
    END IF;
END $$;

CREATE TRIGGER pricelist_rates_references_updated BEFORE UPDATE OF tenant, pricelist_tag, carrier_tag
    ON pricelist_rates FOR EACH ROW
    WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.pricelist_tag IS DISTINCT FROM NEW.pricelist_tag
          OR OLD.carrier_tag IS DISTINCT FROM NEW.carrier_tag)
    EXECUTE FUNCTION pricelist_rates_check_updating();
