"""Many rates of one carrier changed inside a larger pricelist: updated in place on their own pages (HOT
updates, the room left by importer.RATE_FILLFACTOR and migration 015), ids kept, the other carriers untouched."""

from agent.store import decks, importer
from agent.store.importer import csv_rates, import_rates
from tests.store.test_importer import _partition_of, assert_built_as_postgresql_builds

HEADER = "tenant,pricelist_tag,carrier_tag,prefix,rate,rate_increment,description\n"
CATALOG = {
    "carriers": [{"tenant": t, "carrier_tag": c, "host": "10.0.0.9"} for t in ("t", "u") for c in ("c1", "c2", "c3")],
    "pricelists": [{"tenant": t, "pricelist_tag": p} for t in ("t", "u") for p in ("p1", "p2")],
}


def base_deck() -> list[str]:
    """Three carriers in p1 (and one in tenant u), one in p2: the pricelist the replace is a part of."""
    lines = [HEADER]
    for tenant, pricelist, carrier in (("t", "p1", "c1"), ("t", "p1", "c2"), ("t", "p1", "c3"), ("u", "p1", "c1"),
                                       ("t", "p2", "c1")):
        lines += [f"{tenant},{pricelist},{carrier},{prefix},{prefix % 7 + 1},60,\"base, {prefix}\"\n"
                  for prefix in range(1000, 1200)]
    return lines


def replacing_deck() -> list[str]:
    """t's c1 in p1: 1000-1099 kept (even: unchanged, odd: a new price), 1100-1199 gone, 1200-1279 new, one
    prefix given twice (the last counts)."""
    lines = [HEADER]
    for prefix in range(1000, 1100):
        rate = prefix % 7 + 1 if prefix % 2 == 0 else 90
        lines.append(f"t,p1,c1,{prefix},{rate},60,\"base, {prefix}\"\n")
    lines += [f"t,p1,c1,{prefix},5,1,new\n" for prefix in range(1200, 1280)]
    lines.append("t,p1,c1,1001,91,60,\"base, 1001\"\n")
    return lines


async def everything(database) -> dict[tuple, tuple]:
    """The stored rates by key: (id, the page holding the row, the other columns)."""
    rows = await database.fetch("SELECT (ctid::text::point)[0] AS page, * FROM pricelist_rates")
    return {tuple(row[c] for c in importer._KEY): (row["id"], row["page"], tuple(row[c] for c in importer._VALUES))
            for row in rows}


async def test_a_carrier_replaced_inside_a_larger_pricelist_is_updated_on_its_pages_and_keeps_its_ids(
        stack, monkeypatch, tmp_path):
    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    await stack.load(CATALOG)
    await import_rates(stack.database, csv_rates(base_deck(), "default", None, None))
    partition = await _partition_of(stack.database, "p1")
    assert partition  # swapped in: a table made with the room
    assert await stack.database.fetchval("SELECT reloptions FROM pg_class WHERE relname = $1", partition) == [
        f"fillfactor={importer.RATE_FILLFACTOR}"]
    before = await everything(stack.database)
    result = await import_rates(stack.database, csv_rates(replacing_deck(), "default", None, None), replace=True,
                                build=decks.ImportBuild(tmp_path / "decks"))
    assert not result.swapped and result.replaced == 100 and result.rows == 181
    after = await everything(stack.database)
    ours = {key for key in before if key[:2] == ("t", "p1") and key[3] == "c1"}
    assert {key for key in ours if key not in after} == {key for key in ours if key[2] >= "1100"}  # gone
    for key, (rate_id, page, values) in before.items():
        if key not in after:
            continue
        assert after[key][:2] == (rate_id, page)  # the same id, on the same page: changed or not
        if key in ours and int(key[2]) % 2:
            assert after[key][2][1] == (91 if key[2] == "1001" else 90)
        else:
            assert after[key][2] == values
    new = {key for key in after if key not in before}
    assert new == {("t", "p1", str(prefix), "c1", "", 0, 0, 86400) for prefix in range(1200, 1280)}
    assert len({rate_id for rate_id, _, _ in after.values()}) == len(after)
    await assert_built_as_postgresql_builds(stack, result, tmp_path)


async def test_every_partition_and_the_default_one_leave_room_for_updates(stack):
    options = await stack.database.fetch(
        "SELECT c.relname, c.reloptions FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'pricelist_rates'::regclass")
    assert "pricelist_rates_default" in {row["relname"] for row in options}
    assert all(row["reloptions"] == [f"fillfactor={importer.RATE_FILLFACTOR}"] for row in options)
