-- The catalog change log: every write that rating reads appends a row in its own transaction, so agents
-- apply changes one by one instead of reloading the catalog, and catch up from the last row they applied.
-- Rows are appended under a transaction-scoped advisory lock: sequence order is commit order.
--   account  subject: the account tags written (old and new tag of a rename)
--   carrier  subject: the carrier tags written
--   rate     subject: [pricelist_tag, carrier_tag, prefix] of every rate written (before and after)
--   bulk     the tenant's rates changed in bulk (deck import, pricelist or carrier renamed or deleted):
--            a new deck must be built; agents keep rating on the current one until it is activated
--   deck     a deck was built and activated: subject {"covers": seq}, the last change it contains
CREATE TABLE catalog_changes (
    seq     bigserial PRIMARY KEY,
    tenant  text NOT NULL,
    kind    text NOT NULL CHECK (kind IN ('account', 'carrier', 'rate', 'bulk', 'deck')),
    subject jsonb NOT NULL DEFAULT '[]',
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX catalog_changes_tenant_kind ON catalog_changes (tenant, kind, seq);

-- What the log starts from on a database that already holds a catalog: every tenant with rates needs a deck.
INSERT INTO catalog_changes (tenant, kind) SELECT DISTINCT tenant, 'bulk' FROM pricelist_rates;

-- Names this database's folder of built decks (store/decks.py): agents of two databases never share decks.
CREATE TABLE catalog_identity (id uuid PRIMARY KEY DEFAULT gen_random_uuid());
INSERT INTO catalog_identity DEFAULT VALUES;
