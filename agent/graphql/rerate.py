"""`rerate`: the finished calls of a tenant or an account in a time range priced again on the current catalog,
or on a deck version this host keeps (`deck_version`; agent/store/rerate.py). A dry run (the default) answers
the differences; applying writes them, once."""

from __future__ import annotations

from ..keys import CATALOG, DATABASE, SETTINGS
from ..store import management as repo
from ..store.management import ManagementError
from ..store.rerate import SAMPLE_LIMIT, DeckVersionMissing, deck_catalog, rerate
from .common import app_of, mutation, reading, redis_of


def rerate_dict(found) -> dict:
    return {
        "id": found.id, "dry_run": found.dry_run, "tenant": found.tenant, "account_tag": found.account_tag,
        "from": found.start, "to": found.end, "catalog_version": found.catalog_version,
        "examined": found.examined, "changed": found.changed, "skipped": found.skipped, "delta": found.delta,
        "settled": found.settled, "calls": found.calls,
    }


@mutation.field("rerate")
async def resolve_rerate(_, info, tenant="default", account_tag=None, dry_run=True, limit=100, deck_version=None,
                         **arguments):
    start, end = arguments["from"], arguments["to"]  # `from` is a Python keyword
    if tenant is None:
        raise ManagementError("tenant: must not be null")
    if end <= start:
        raise ManagementError("to: must be after from")
    if limit is None or not 0 <= limit <= SAMPLE_LIMIT:
        raise ManagementError(f"limit: must be between 0 and {SAMPLE_LIMIT}")
    if account_tag is not None:
        async with reading(info) as connection:
            if not await repo.tag_exists(connection, "accounts", "account_tag", tenant, account_tag):
                raise ManagementError(f"account_tag: Account with tag = {account_tag} not found in tenant {tenant}!")
    catalog = await app_of(info)[CATALOG].catch_up()  # every change PostgreSQL holds
    if deck_version is not None:  # the tenant's rates as a deck this host keeps holds them
        try:
            catalog = await deck_catalog(app_of(info)[DATABASE], app_of(info)[SETTINGS].decks, catalog, tenant,
                                         deck_version)
        except DeckVersionMissing as exc:
            raise ManagementError(f"deck_version: {exc}") from None
    found = await rerate(app_of(info)[DATABASE], redis_of(info), catalog, tenant, account_tag, start, end,
                         dry_run=dry_run is not False, sample=limit, replicas=app_of(info)[SETTINGS].redis_replicas)
    return rerate_dict(found)


bindables: list = []
