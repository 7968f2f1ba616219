-- A rate's source prefix is checked as before ('' or up to 16 digits), but '' (nearly every rate) by an
-- equality instead of a regular expression: every row a deck's COPY writes evaluates it, and the
-- expression was a fifth of PostgreSQL's work in the COPY of a 2,000,000-rate deck (loadtest/BENCHMARKS.md,
-- session 11). On the partitioned table: every partition's constraint is replaced (and checked) with it.
ALTER TABLE pricelist_rates
    DROP CONSTRAINT pricelist_rates_source_prefix_check,
    ADD CONSTRAINT pricelist_rates_source_prefix_check
        CHECK (source_prefix = '' OR source_prefix ~ '^[0-9]{1,16}$');
