"""The command line (agent/__main__.py) against real servers."""

import json

from tests.conftest import run_cli
from tests.test_transaction import catalog, prepaid


def test_importing_a_catalog_again_keeps_live_balances_unless_asked_to_set_them(stack, tmp_path):
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("kept", 500))))
    servers = {"redis_url": stack.redis_url, "database_url": stack.database_url}
    run_cli("import", "catalog", str(document), **servers)
    assert run_cli("balance", "add", "kept", "-120", **servers).stdout.strip() == "380"
    run_cli("import", "catalog", str(document), **servers)  # what calls were charged since stays charged
    assert run_cli("balance", "add", "kept", "0", **servers).stdout.strip() == "380"
    run_cli("import", "catalog", str(document), "--set-balances", **servers)
    assert run_cli("balance", "add", "kept", "0", **servers).stdout.strip() == "500"
