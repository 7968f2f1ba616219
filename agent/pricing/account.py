"""A rated account as the kernel sees it (the catalog part; the live balance lives in Redis)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class AccountType(str, Enum):
    PREPAID = "PREPAID"
    POSTPAID = "POSTPAID"


@dataclass(frozen=True, slots=True)
class Account:
    tenant: str
    account_tag: str
    type: AccountType = AccountType.PREPAID
    active: bool = True
    balance: int = 0
    credit_limit: int | None = None
    max_concurrent_transactions: int | None = None
    max_inbound_transactions: int | None = None
    max_outbound_transactions: int | None = None
    pricelist_tags: tuple[str, ...] = ()
    carrier_tags: tuple[str, ...] = ()
    carrier_tags_override: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    linked_accounts: tuple[str, ...] = ()
    name: str | None = None

    @property
    def spends_balance(self) -> bool:
        """Whether calls must be covered by the balance: PREPAID, or POSTPAID with a credit limit."""
        return self.type is AccountType.PREPAID or self.credit_limit is not None

    @property
    def credit(self) -> int:
        """How far below zero the balance may go."""
        if self.type is AccountType.PREPAID:
            return 0
        return self.credit_limit or 0
