"""Sellers (bookkeeping only)."""

from __future__ import annotations

from ariadne import ObjectType

from ..store.management import SELLERS
from .common import crud

seller = ObjectType("Seller")

crud(SELLERS, "Sellers")

bindables = [seller]
