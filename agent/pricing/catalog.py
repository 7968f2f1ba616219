"""An immutable snapshot of everything rating reads: accounts, carriers and one rate table per tenant.

A new snapshot is built aside and swapped in with one assignment, so every request is rated against one
consistent catalog, old or new, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from immutables import Map as Records  # persistent: a changed copy shares the unchanged entries

from .account import Account
from .carrier import Carrier
from .rate import Rate
from .table import RateTable

EMPTY_TABLE = RateTable().freeze()


@dataclass(frozen=True, slots=True)
class Catalog:
    accounts: Mapping[tuple[str, str], Account] = field(default_factory=Records)
    carriers: Mapping[tuple[str, str], Carrier] = field(default_factory=Records)
    tables: dict[str, RateTable] = field(default_factory=dict)
    version: int = 0
    # Routing results of this snapshot by (routing profile, longest matching prefix): see routing.route.
    routes: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, accounts: Iterable[Account] = (), carriers: Iterable[Carrier] = (), rates: Iterable[Rate] = (),
           version: int = 0) -> "Catalog":
        """A snapshot from its parts, rates grouped into one table per tenant (the store's loader does the
        same while streaming rows)."""
        tables: dict[str, RateTable] = {}
        for rate in rates:
            tables.setdefault(rate.tenant, RateTable()).add(rate)
        return cls(
            accounts=Records({(a.tenant, a.account_tag): a for a in accounts}),
            carriers=Records({(c.tenant, c.carrier_tag): c for c in carriers}),
            tables={tenant: table.freeze() for tenant, table in tables.items()},
            version=version,
        )

    def account(self, tenant: str, tag: str | None) -> Account | None:
        if not tag:
            return None
        return self.accounts.get((tenant, tag))

    def carrier(self, tenant: str, tag: str | None) -> Carrier | None:
        if tag is None:
            return None
        return self.carriers.get((tenant, tag))

    def table(self, tenant: str) -> RateTable:
        return self.tables.get(tenant, EMPTY_TABLE)

    @property
    def rate_count(self) -> int:
        return sum(table.size for table in self.tables.values())
