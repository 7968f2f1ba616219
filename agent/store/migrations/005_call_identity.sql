-- A transaction tag used again after its call became final (refused, expired, rolled back) or left Redis
-- names a new call (cache/rating.lua, `ci`): each call keeps its own records, none replaces another's.
-- Records written before this migration belong to the call '' of their tag.
ALTER TABLE transactions ADD COLUMN call_id text NOT NULL DEFAULT '';
ALTER TABLE transactions DROP CONSTRAINT transactions_tenant_transaction_tag_account_tag_key;
ALTER TABLE transactions ADD CONSTRAINT transactions_call_account
    UNIQUE (tenant, transaction_tag, call_id, account_tag);
