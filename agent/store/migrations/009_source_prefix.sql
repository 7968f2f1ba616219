-- Origin rating (agent/pricing/routing.py): a rate's optional `source_prefix` is the digits the caller's
-- number must start with, normalized as number prefixes are (the writers store `+39` as `39`); '' serves
-- any origin, which every existing rate keeps, so existing decks rate exactly as before. Not NULL: the
-- rate's identity includes it (two origins may price one destination prefix), and '' compares equal in the
-- unique key and in the importer's merge join, where NULL would not.
ALTER TABLE pricelist_rates
    ADD COLUMN source_prefix text NOT NULL DEFAULT '' CHECK (source_prefix ~ '^[0-9]{0,16}$');
ALTER TABLE pricelist_rates
    DROP CONSTRAINT pricelist_rates_tenant_pricelist_tag_prefix_carrier_tag_key,
    ADD CONSTRAINT pricelist_rates_identity_key
        UNIQUE (tenant, pricelist_tag, prefix, carrier_tag, source_prefix);
