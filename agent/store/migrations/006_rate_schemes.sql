-- Billing schemes (agent/pricing/rate.py): a first block of `initial_increment` seconds (NULL: one
-- `rate_increment`, as before), at least `minimum_duration` seconds billed once answered, and an optional
-- `maximum_cost` per call. Existing rates get the defaults, under which they price exactly as before.
-- The bound that keeps every amount exact in Redis (below 2**53) is checked by the writers (importer,
-- GraphQL) with the kernel's own rule (rate.limit_error); the column checks hold what SQL can say alone.
ALTER TABLE pricelist_rates
    ADD COLUMN initial_increment integer CHECK (initial_increment > 0
        AND initial_increment % greatest(rate_increment, 1) = 0),
    ADD COLUMN minimum_duration integer NOT NULL DEFAULT 0
        CHECK (minimum_duration >= 0 AND minimum_duration <= 10000000),
    ADD COLUMN maximum_cost bigint CHECK (maximum_cost >= 0);
