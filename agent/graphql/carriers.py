"""Carriers: where calls are sent. A change reaches every agent's catalog at commit."""

from __future__ import annotations

from ariadne import ObjectType

from ..store.management import CARRIERS
from .common import crud

carrier = ObjectType("Carrier")

crud(CARRIERS, "Carriers")

bindables = [carrier]
