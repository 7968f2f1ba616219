"""Pricelists: named groups of rates. Deleting one deletes its rates."""

from __future__ import annotations

from ariadne import ObjectType

from ..store.management import PRICELISTS
from .common import crud

pricelist = ObjectType("Pricelist")

crud(PRICELISTS, "Pricelists")

bindables = [pricelist]
