"""GraphQL: Canyan's management API and the agent's GraphQL operations in one schema (`endpoint.py`).

Importing this package (or its light modules: `security`, `limits`) does not build the schema: a worker,
which passes GraphQL to the manager, never pays for ariadne, graphql-core and the resolvers; only `setup`
(the manager, or an agent alone) imports `endpoint`.
"""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    """Adds `/graphql`, the explorer's assets, the deck upload endpoint and the exposure check."""
    from .endpoint import setup as endpoint_setup

    endpoint_setup(app)
