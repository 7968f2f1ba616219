-- Decimal prices (agent/pricing/rate.py): a pricelist's money `scale` is how many decimal digits below the
-- account's integer unit its rates' connect_fee, rate and maximum_cost are written in (0.0085 at scale 4
-- is stored as 85), and `rounding` how the exact fee of a call becomes integer money, once per call.
-- Existing pricelists get scale 0 and round up, under which they price exactly as before (nothing to
-- round). The scale of a pricelist that has rates is not changed by the writers: it gives their meaning.
ALTER TABLE pricelists
    ADD COLUMN scale smallint NOT NULL DEFAULT 0 CHECK (scale BETWEEN 0 AND 6),
    ADD COLUMN rounding text NOT NULL DEFAULT 'up' CHECK (rounding IN ('up', 'half_even', 'down'));
