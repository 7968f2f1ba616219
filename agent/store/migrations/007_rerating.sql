-- Rerating (agent/store/rerate.py): finished calls priced again against the current catalog.
--
-- A record a rerate changed names that rerate (`rerate_id`) and keeps the fee it was first charged
-- (`original_fee`). Each changed record gives one balance adjustment, written here in the same transaction
-- as the record's new fee and settled afterwards through Redis (the ledger's `adjust` move, named by the
-- call's transaction tag); `applied_at` is set once Redis has made the move. An adjustment left unapplied
-- (the rerate stopped between PostgreSQL and Redis) is settled by the next rerate of its tenant, and Redis
-- remembers the adjustments it made per rerate, so none is made twice.
ALTER TABLE transactions
    ADD COLUMN rerate_id text,
    ADD COLUMN original_fee bigint;

CREATE TABLE rerates (
    id              text PRIMARY KEY,
    tenant          text NOT NULL,
    account_tag     text,
    range_start     timestamptz NOT NULL,
    range_end       timestamptz NOT NULL,
    catalog_version bigint NOT NULL,
    examined        integer NOT NULL DEFAULT 0,
    changed         integer NOT NULL DEFAULT 0,
    delta           bigint NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE TABLE rerate_adjustments (
    id              bigserial PRIMARY KEY,
    rerate_id       text NOT NULL REFERENCES rerates (id),
    tenant          text NOT NULL,
    account_tag     text NOT NULL,
    transaction_tag text NOT NULL,
    call_id         text NOT NULL,
    old_fee         bigint NOT NULL,
    new_fee         bigint NOT NULL,
    applied_at      timestamptz
);
CREATE INDEX rerate_adjustments_pending ON rerate_adjustments (tenant) WHERE applied_at IS NULL;
