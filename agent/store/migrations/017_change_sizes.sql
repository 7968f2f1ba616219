-- How many rates a rate change names, beside its subject: the deck builder's look each second sums it over
-- the changes since each deck (decks.stale_tenants), which read every subject before (a 1,000-rate swap's
-- is some 30 kB, stored out of line) and grew with each change since the deck.
ALTER TABLE catalog_changes ADD COLUMN size integer NOT NULL DEFAULT 0;
UPDATE catalog_changes SET size = jsonb_array_length(subject) WHERE kind = 'rate';
