-- Management API entities that rating does not read: customers, sellers, invoices; invoice links on records.

CREATE TABLE customers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant       text NOT NULL DEFAULT 'default',
    customer_tag text NOT NULL,
    company_name text,
    firstname    text,
    lastname     text,
    email        text,
    tax_number   text,
    vat_number   text,
    vat_policy   text CHECK (vat_policy IN ('EXEMPT', 'VAT_INCLUDED', 'VAT_EXCLUDED')),
    address      text,
    zipcode      text,
    city         text,
    province     text,
    country      text,
    active       boolean NOT NULL DEFAULT true,
    UNIQUE (tenant, customer_tag)
);

CREATE TABLE sellers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant       text NOT NULL DEFAULT 'default',
    seller_tag   text NOT NULL,
    company_name text,
    firstname    text,
    lastname     text,
    email        text,
    tax_number   text,
    vat_number   text,
    address      text,
    zipcode      text,
    city         text,
    province     text,
    country      text,
    active       boolean NOT NULL DEFAULT true,
    UNIQUE (tenant, seller_tag)
);

CREATE TABLE invoices (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant         text NOT NULL DEFAULT 'default',
    invoice_number text NOT NULL,
    invoice_date   date NOT NULL DEFAULT CURRENT_DATE,
    customer_tag   text,
    rows           jsonb NOT NULL DEFAULT '[]',
    net_total      numeric(40, 0),
    vat_rate       integer,
    total          numeric(40, 0),
    UNIQUE (tenant, invoice_number)
);

ALTER TABLE transactions ADD COLUMN invoice_number text;
CREATE INDEX transactions_tag ON transactions (tenant, transaction_tag);
