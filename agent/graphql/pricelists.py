"""Pricelists: named groups of rates. Deleting one deletes its rates.

A pricelist's money `scale` and `rounding` (decimal prices, agent/pricing/rate.py) are written here too:
the scale only while the pricelist has no rates (it gives their stored integers their meaning), a new
rounding rebuilds the tenant's deck, since every rate of the pricelist then prices differently. So does a
new `timezone` (an IANA name, default UTC), where the time windows of its rates are judged.
"""

from __future__ import annotations

import dataclasses

from ariadne import ObjectType

from ..store import changes
from ..store import management as repo
from ..pricing.rate import zone_of
from ..store.importer import pricelist_terms, set_terms
from ..store.management import PRICELISTS as _PLAIN, ManagementError
from .common import crud, mutation, writing

pricelist = ObjectType("Pricelist")

# the management entity with the pricing terms of migration 008 (a null sets them back to their defaults)
PRICELISTS = dataclasses.replace(
    _PLAIN, columns=(*_PLAIN.columns, "scale", "rounding", "timezone"),
    cleared={**_PLAIN.cleared, "scale": 0, "rounding": "up", "timezone": "UTC"})

crud(PRICELISTS, "Pricelists")


async def resolve_write(_, info, **args):
    """crud's create/update/upsert, with the terms checked (and a rounding change recorded) in the write."""
    async with writing(info) as (connection, recorder):
        async def bound(values: dict, old: dict | None) -> None:
            try:
                given = {name: PRICELISTS.cleared[name] if values[name] is None else values[name]
                         for name in ("scale", "rounding") if name in values}
                scale, rounding = pricelist_terms(given)
                if values.get("timezone") is not None:
                    values["timezone"] = zone_of(values["timezone"])
                if old is not None:
                    await set_terms(connection, recorder, old["tenant"], old["pricelist_tag"], scale, rounding)
                    if "timezone" in values and values["timezone"] != old.get("timezone"):
                        recorder.add(old["tenant"], "bulk")  # its windows move: the deck is built again
            except ValueError as exc:
                raise ManagementError(f"{exc}!") from None
        record, old = await repo.upsert(connection, PRICELISTS, args, bound)
        changes.of_write(recorder, PRICELISTS.table, record, old)
    return record


for _verb in ("create", "update", "upsert"):
    mutation.set_field(f"{_verb}Pricelist", resolve_write)

bindables = [pricelist]
