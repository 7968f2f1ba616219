"""The checked-in SDL file is the schema the service serves (compared through introspection over HTTP)."""

from __future__ import annotations

from pathlib import Path

from graphql import build_client_schema, build_schema, get_introspection_query, print_schema

SDL_FILE = Path(__file__).resolve().parents[2] / "agent" / "graphql" / "schema.graphql"


def normalized(schema) -> str:
    return print_schema(schema).strip()


async def test_served_schema_equals_the_checked_in_sdl(gql):
    api = await gql()
    introspection = await api(get_introspection_query(descriptions=True))
    served = build_client_schema(introspection)
    assert normalized(served) == normalized(build_schema(SDL_FILE.read_text()))


def test_names_are_snake_case_as_in_the_spec():
    schema = build_schema(SDL_FILE.read_text())
    mutations = schema.mutation_type.fields
    assert schema.mutation_type.name == "Mutations"
    assert "tags" in mutations["authorization"].args
    for name in ("createPricelistRate", "setAccountBalance", "beginAccountTransaction", "recordTransaction"):
        assert name in mutations
    for name in ("allPricelistRates", "_allPricelistRatesMeta", "AccountTransaction", "leastCostRouting", "version"):
        assert name in schema.query_type.fields
    assert "max_concurrent_transactions" in schema.type_map["Account"].fields
