-- Time windows (agent/pricing/rate.py): a rate may apply only on some local weekdays (`weekdays`, bit n for
-- mon..sun, 0: every day) and between two local times of day (`time_start`, `time_end`: seconds of the day,
-- the end exclusive; an end at or below the start wraps over midnight), judged in its pricelist's
-- `timezone` (IANA name). Stored canonically, never NULL: every day is 0, the whole day 0 to 86400, which
-- every existing rate gets, so existing decks rate exactly as before. Not NULL because the window is part
-- of the rate's identity (a peak and an off-peak price of one prefix are two rates), and NULL would not
-- compare equal in the unique key or in the importer's merge join.
ALTER TABLE pricelists
    ADD COLUMN timezone text NOT NULL DEFAULT 'UTC' CHECK (timezone <> '');
ALTER TABLE pricelist_rates
    ADD COLUMN weekdays smallint NOT NULL DEFAULT 0 CHECK (weekdays BETWEEN 0 AND 127),
    ADD COLUMN time_start integer NOT NULL DEFAULT 0 CHECK (time_start BETWEEN 0 AND 86399),
    ADD COLUMN time_end integer NOT NULL DEFAULT 86400 CHECK (time_end BETWEEN 0 AND 86400 AND time_end <> time_start);
ALTER TABLE pricelist_rates
    DROP CONSTRAINT pricelist_rates_identity_key,
    ADD CONSTRAINT pricelist_rates_identity_key
        UNIQUE (tenant, pricelist_tag, prefix, carrier_tag, source_prefix, weekdays, time_start, time_end);
