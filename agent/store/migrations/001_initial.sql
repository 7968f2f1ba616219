-- Catalog, call records and the balance ledger.

CREATE TABLE carriers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant      text NOT NULL DEFAULT 'default',
    carrier_tag text NOT NULL,
    host        text,
    port        integer,
    protocol    text NOT NULL DEFAULT 'UDP' CHECK (protocol IN ('UDP', 'TCP', 'TLS')),
    active      boolean NOT NULL DEFAULT true,
    UNIQUE (tenant, carrier_tag)
);

CREATE TABLE pricelists (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant        text NOT NULL DEFAULT 'default',
    pricelist_tag text NOT NULL,
    name          text,
    currency      text CHECK (currency IN ('EUR', 'USD')),
    UNIQUE (tenant, pricelist_tag)
);

CREATE TABLE pricelist_rates (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant         text NOT NULL DEFAULT 'default',
    pricelist_tag  text NOT NULL,
    carrier_tag    text NOT NULL,
    prefix         text NOT NULL,
    datetime_start timestamptz,
    datetime_end   timestamptz,
    active         boolean NOT NULL DEFAULT true,
    connect_fee    bigint NOT NULL DEFAULT 0 CHECK (connect_fee >= 0),
    rate           bigint NOT NULL DEFAULT 0 CHECK (rate >= 0),
    rate_increment integer NOT NULL DEFAULT 1 CHECK (rate_increment >= 0),
    interval_start integer NOT NULL DEFAULT 0 CHECK (interval_start >= 0),
    description    text,
    UNIQUE (tenant, pricelist_tag, prefix, carrier_tag),
    FOREIGN KEY (tenant, pricelist_tag) REFERENCES pricelists (tenant, pricelist_tag)
        ON UPDATE CASCADE ON DELETE CASCADE,
    FOREIGN KEY (tenant, carrier_tag) REFERENCES carriers (tenant, carrier_tag)
        ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE accounts (
    id                          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant                      text NOT NULL DEFAULT 'default',
    account_tag                 text NOT NULL,
    name                        text,
    type                        text NOT NULL DEFAULT 'PREPAID' CHECK (type IN ('PREPAID', 'POSTPAID')),
    customer_tag                text,
    notification_email          text,
    notification_mobile         text,
    active                      boolean NOT NULL DEFAULT true,
    balance                     bigint NOT NULL DEFAULT 0,
    balance_version             bigint NOT NULL DEFAULT 0,
    credit_limit                bigint CHECK (credit_limit >= 0),
    max_concurrent_transactions integer,
    max_inbound_transactions    integer,
    max_outbound_transactions   integer,
    carrier_tags                text[] NOT NULL DEFAULT '{}',
    carrier_tags_override       text[] NOT NULL DEFAULT '{}',
    pricelist_tags              text[] NOT NULL DEFAULT '{}',
    tags                        text[] NOT NULL DEFAULT '{}',
    linked_accounts             text[] NOT NULL DEFAULT '{}',
    UNIQUE (tenant, account_tag)
);

-- One row per call and account: the authorization record, then the call record (Canyan's Transaction).
CREATE TABLE transactions (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant              text NOT NULL,
    transaction_tag     text NOT NULL,
    account_tag         text NOT NULL,
    state               text NOT NULL,
    source              text,
    source_ip           text,
    destination         text,
    carrier_ip          text,
    tags                text[] NOT NULL DEFAULT '{}',
    authorized          boolean,
    unauthorized_reason text,
    destination_rate    jsonb,
    timestamp_auth      timestamptz,
    timestamp_begin     timestamptz,
    timestamp_end       timestamptz,
    "primary"           boolean NOT NULL DEFAULT false,
    inbound             boolean NOT NULL DEFAULT false,
    duration            integer,
    fee                 bigint,
    max_available_units integer,
    version             bigint NOT NULL,
    UNIQUE (tenant, transaction_tag, account_tag)
);
CREATE INDEX transactions_account ON transactions (tenant, account_tag, timestamp_auth);

-- Every balance move; `id` is the outbox entry that carried it, so a replay inserts nothing twice.
CREATE TABLE ledger (
    id              text PRIMARY KEY,
    version         bigint NOT NULL,
    tenant          text NOT NULL,
    account_tag     text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund', 'set', 'adjust')),
    amount          bigint NOT NULL,
    balance_after   bigint NOT NULL,
    transaction_tag text,
    created_at      timestamptz NOT NULL
);
CREATE INDEX ledger_account ON ledger (tenant, account_tag, version);
