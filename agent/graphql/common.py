"""What the resolver modules share: access to the app's resources, write transactions, list resolvers."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable

from ariadne import ObjectType, QueryType
from aiohttp import web

from ..keys import DATABASE, PIPELINE, REDIS, SETTINGS
from ..store import changes, decks
from ..store import management as repo
from ..store.management import Entity, ManagementError

query = QueryType()
mutation = ObjectType("Mutations")


def related(object_type: ObjectType, field: str, entity: Entity) -> None:
    """Resolves `field` to the record of `entity` the parent names by that entity's key (e.g. its
    `customer_tag`), in the parent's tenant; null when the parent names none."""

    @object_type.field(field)
    async def resolve(record, info):
        if not all(record.get(name) for name in entity.key):
            return None
        async with reading(info) as connection:
            return await repo.fetch_by_key(connection, entity, record["tenant"], record)


def app_of(info) -> web.Application:
    return info.context["request"].app


def pool_of(info):
    return app_of(info)[DATABASE]


def redis_of(info):
    return app_of(info)[REDIS]


def pipeline_of(info):
    return app_of(info)[PIPELINE]


@contextlib.asynccontextmanager
async def reading(info) -> AsyncIterator[Any]:
    async with pool_of(info).acquire() as connection:
        yield connection


@contextlib.asynccontextmanager
async def writing(info) -> AsyncIterator[tuple[Any, changes.Recorder]]:
    """A connection in a transaction and the recorder of the catalog changes it makes, which are logged at
    commit and published once committed (a bulk change after its deck is built): when the mutation answers,
    the next authorization anywhere is rated with it."""
    recorder = changes.Recorder()
    async with pool_of(info).acquire() as connection:
        async with connection.transaction():
            yield connection, recorder
            seq = await recorder.write(connection)
    if seq:
        await decks.publish(app_of(info)[SETTINGS], pool_of(info), redis_of(info), recorder.bulk,
                            accounts=recorder.accounts_alone)


def crud(
    entity: Entity,
    plural: str,
    where: Callable[[Any, Any, dict], Awaitable[repo.Where]] | None = None,
    prepare: Callable[[Any, dict], Awaitable[dict]] | None = None,
    check: Callable[[Any, dict, dict | None], Awaitable[None]] | None = None,
    after_write: Callable[[Any, dict, dict, dict | None], Awaitable[dict]] | None = None,
    live_check: Callable[[Any, dict, dict | None], Awaitable[None]] | None = None,
    before_delete: Callable[[Any, Any, dict], Awaitable[None]] | None = None,
    after_delete: Callable[[Any, dict], Awaitable[None]] | None = None,
) -> None:
    """Binds the single query, the list and count queries and the four mutations of one entity."""
    name = entity.name

    async def build_where(info, connection, args: dict) -> repo.Where:
        if where is not None:
            return await where(info, connection, args.get("filter") or {})
        return repo.base_filter(entity, args.get("filter"))

    async def resolve_one(_, info, **args):
        async with reading(info) as connection:
            return await repo.fetch_one(connection, entity, args)

    async def resolve_all(_, info, **args):
        async with reading(info) as connection:
            return await repo.list_rows(connection, entity, await build_where(info, connection, args), args)

    async def resolve_meta(_, info, **args):
        async with reading(info) as connection:
            return {"count": await repo.count_rows(connection, entity, await build_where(info, connection, args))}

    async def resolve_write(_, info, **args):
        async with writing(info) as (connection, recorder):
            given = args if prepare is None else await prepare(connection, args)
            async def bound(values: dict, old: dict | None) -> None:
                if check is not None:
                    await check(connection, values, old)
                if live_check is not None:  # what Redis must allow (the live state), inside the write
                    await live_check(info, values, old)
            record, old = await repo.upsert(connection, entity, given, bound)
            if entity.catalog:
                changes.of_write(recorder, entity.table, record, old)
        if after_write is not None:
            record = await after_write(info, args, record, old)
        return record

    async def resolve_delete(_, info, **args):
        async with writing(info) as (connection, recorder):
            record = await repo.fetch_one(connection, entity, args)
            if record is None:
                return None
            if before_delete is not None:
                await before_delete(info, connection, record)
            await repo.delete(connection, entity, {"id": record["id"]})
            if entity.catalog:
                changes.of_write(recorder, entity.table, None, record)
        if after_delete is not None:
            await after_delete(info, record)
        return record

    query.set_field(name, resolve_one)
    query.set_field(f"all{plural}", resolve_all)
    query.set_field(f"_all{plural}Meta", resolve_meta)
    for verb in ("create", "update", "upsert"):
        mutation.set_field(f"{verb}{name}", resolve_write)
    mutation.set_field(f"delete{name}", resolve_delete)


async def require(connection, sql: str, *params, message: str) -> Any:
    """The first column of the first row, or ManagementError(message) when there is none."""
    found = await connection.fetchval(sql, *params)
    if found is None:
        raise ManagementError(message)
    return found
