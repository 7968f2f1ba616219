-- Rate decks of millions of rows (agent/store/importer.py): what a bulk write of pricelist_rates costs.
--
-- The two foreign keys of pricelist_rates ran two lookups for every inserted rate, half the time of a
-- deck import. Triggers now do their work: an insert statement's distinct (tenant, pricelist, carrier)
-- are checked once per statement, the referenced rows locked as a foreign key locks them (FOR KEY SHARE,
-- so a concurrent delete or rename waits for the writer), with the foreign key's error (SQLSTATE 23503,
-- same constraint names and messages); an update that changes a rate's references checks that row; and
-- renaming or deleting a pricelist or carrier carries on to its rates as ON UPDATE/DELETE CASCADE did
-- (a TRUNCATE of pricelists or carriers deletes the rates too). A writer that checked and locked the
-- references of everything it inserts itself says so for its transaction (the deck importer, once per
-- pricelist/carrier pair): SET LOCAL rating.rate_references = 'checked'.

ALTER TABLE pricelist_rates
    DROP CONSTRAINT pricelist_rates_tenant_pricelist_tag_fkey,
    DROP CONSTRAINT pricelist_rates_tenant_carrier_tag_fkey;

CREATE FUNCTION pricelist_rates_check_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing record;
BEGIN
    IF current_setting('rating.rate_references', true) = 'checked' THEN
        RETURN NULL;
    END IF;
    WITH pairs AS MATERIALIZED (SELECT DISTINCT tenant, pricelist_tag, carrier_tag FROM new_rates),
    carriers_found AS MATERIALIZED (
        SELECT c.tenant, c.carrier_tag FROM carriers c
        WHERE (c.tenant, c.carrier_tag) IN (SELECT tenant, carrier_tag FROM pairs) FOR KEY SHARE OF c),
    pricelists_found AS MATERIALIZED (
        SELECT p.tenant, p.pricelist_tag FROM pricelists p
        WHERE (p.tenant, p.pricelist_tag) IN (SELECT tenant, pricelist_tag FROM pairs) FOR KEY SHARE OF p),
    checked AS (
        SELECT pairs.*,
            NOT EXISTS (SELECT 1 FROM carriers_found f
                        WHERE f.tenant = pairs.tenant AND f.carrier_tag = pairs.carrier_tag) AS no_carrier,
            NOT EXISTS (SELECT 1 FROM pricelists_found f
                        WHERE f.tenant = pairs.tenant AND f.pricelist_tag = pairs.pricelist_tag) AS no_pricelist
        FROM pairs)
    SELECT * INTO missing FROM checked WHERE no_carrier OR no_pricelist ORDER BY no_carrier DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF missing.no_carrier THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "pricelist_rates" violates foreign key constraint'
                      ' "pricelist_rates_tenant_carrier_tag_fkey"',
            DETAIL = format('Key (tenant, carrier_tag)=(%s, %s) is not present in table "carriers".',
                            missing.tenant, missing.carrier_tag),
            CONSTRAINT = 'pricelist_rates_tenant_carrier_tag_fkey', TABLE = 'pricelist_rates';
    ELSE
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "pricelist_rates" violates foreign key constraint'
                      ' "pricelist_rates_tenant_pricelist_tag_fkey"',
            DETAIL = format('Key (tenant, pricelist_tag)=(%s, %s) is not present in table "pricelists".',
                            missing.tenant, missing.pricelist_tag),
            CONSTRAINT = 'pricelist_rates_tenant_pricelist_tag_fkey', TABLE = 'pricelist_rates';
    END IF;
END $$;

CREATE TRIGGER pricelist_rates_references_inserted AFTER INSERT ON pricelist_rates
    REFERENCING NEW TABLE AS new_rates FOR EACH STATEMENT EXECUTE FUNCTION pricelist_rates_check_inserted();

CREATE FUNCTION pricelist_rates_check_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant, NEW.carrier_tag) IS DISTINCT FROM (OLD.tenant, OLD.carrier_tag) THEN
        PERFORM 1 FROM carriers c WHERE c.tenant = NEW.tenant AND c.carrier_tag = NEW.carrier_tag
            FOR KEY SHARE OF c;
        IF NOT FOUND THEN
            RAISE foreign_key_violation USING
                MESSAGE = 'insert or update on table "pricelist_rates" violates foreign key constraint'
                          ' "pricelist_rates_tenant_carrier_tag_fkey"',
                DETAIL = format('Key (tenant, carrier_tag)=(%s, %s) is not present in table "carriers".',
                                NEW.tenant, NEW.carrier_tag),
                CONSTRAINT = 'pricelist_rates_tenant_carrier_tag_fkey', TABLE = 'pricelist_rates';
        END IF;
    END IF;
    IF (NEW.tenant, NEW.pricelist_tag) IS DISTINCT FROM (OLD.tenant, OLD.pricelist_tag) THEN
        PERFORM 1 FROM pricelists p WHERE p.tenant = NEW.tenant AND p.pricelist_tag = NEW.pricelist_tag
            FOR KEY SHARE OF p;
        IF NOT FOUND THEN
            RAISE foreign_key_violation USING
                MESSAGE = 'insert or update on table "pricelist_rates" violates foreign key constraint'
                          ' "pricelist_rates_tenant_pricelist_tag_fkey"',
                DETAIL = format('Key (tenant, pricelist_tag)=(%s, %s) is not present in table "pricelists".',
                                NEW.tenant, NEW.pricelist_tag),
                CONSTRAINT = 'pricelist_rates_tenant_pricelist_tag_fkey', TABLE = 'pricelist_rates';
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER pricelist_rates_references_updated AFTER UPDATE OF tenant, pricelist_tag, carrier_tag
    ON pricelist_rates FOR EACH ROW
    WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.pricelist_tag IS DISTINCT FROM NEW.pricelist_tag
          OR OLD.carrier_tag IS DISTINCT FROM NEW.carrier_tag)
    EXECUTE FUNCTION pricelist_rates_check_updated();

CREATE FUNCTION pricelists_cascade_rates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM pricelist_rates WHERE tenant = OLD.tenant AND pricelist_tag = OLD.pricelist_tag;
    ELSE
        UPDATE pricelist_rates SET tenant = NEW.tenant, pricelist_tag = NEW.pricelist_tag
            WHERE tenant = OLD.tenant AND pricelist_tag = OLD.pricelist_tag;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER pricelists_cascade_deleted AFTER DELETE ON pricelists
    FOR EACH ROW EXECUTE FUNCTION pricelists_cascade_rates();
CREATE TRIGGER pricelists_cascade_renamed AFTER UPDATE OF tenant, pricelist_tag ON pricelists FOR EACH ROW
    WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.pricelist_tag IS DISTINCT FROM NEW.pricelist_tag)
    EXECUTE FUNCTION pricelists_cascade_rates();

CREATE FUNCTION carriers_cascade_rates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM pricelist_rates WHERE tenant = OLD.tenant AND carrier_tag = OLD.carrier_tag;
    ELSE
        UPDATE pricelist_rates SET tenant = NEW.tenant, carrier_tag = NEW.carrier_tag
            WHERE tenant = OLD.tenant AND carrier_tag = OLD.carrier_tag;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER carriers_cascade_deleted AFTER DELETE ON carriers
    FOR EACH ROW EXECUTE FUNCTION carriers_cascade_rates();
CREATE TRIGGER carriers_cascade_renamed AFTER UPDATE OF tenant, carrier_tag ON carriers FOR EACH ROW
    WHEN (OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.carrier_tag IS DISTINCT FROM NEW.carrier_tag)
    EXECUTE FUNCTION carriers_cascade_rates();

-- With the foreign keys, TRUNCATE pricelists or carriers needed pricelist_rates in the same statement
-- (or CASCADE); the rates of a truncated pricelist or carrier table go with it.
CREATE FUNCTION truncate_rates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pricelist_rates;
    RETURN NULL;
END $$;

CREATE TRIGGER pricelists_cascade_truncated AFTER TRUNCATE ON pricelists
    FOR EACH STATEMENT EXECUTE FUNCTION truncate_rates();
CREATE TRIGGER carriers_cascade_truncated AFTER TRUNCATE ON carriers
    FOR EACH STATEMENT EXECUTE FUNCTION truncate_rates();
