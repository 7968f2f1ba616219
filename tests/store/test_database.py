"""Connecting to PostgreSQL (agent/store/database.py): pools ranked like their process, stateless pools."""

import os
import subprocess
import sys
import textwrap

from agent.store.database import create_pool
from tests.conftest import ROOT


def test_a_pool_of_a_niced_process_ranks_its_backends_and_one_at_nice_0_does_not(postgres_server):
    probe = textwrap.dedent(f"""
        import asyncio, os
        from agent.store.database import create_pool

        async def main():
            pool = await create_pool({postgres_server.url!r}, max_size=1)
            async with pool.acquire() as connection:
                pid = await connection.fetchval("SELECT pg_backend_pid()")
                print(os.getpriority(os.PRIO_PROCESS, pid))
            await pool.close()

        asyncio.run(main())
    """)
    for nice, expected in ((6, "6"), (0, "0")):
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda nice=nice: os.setpriority(os.PRIO_PROCESS, 0, nice))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == expected


async def test_a_stateless_pool_takes_a_connection_back_without_a_statement_and_a_default_one_resets_it(stack):
    for stateless, resets in ((True, False), (False, True)):
        pool = await create_pool(stack.database_url, stateless=stateless, max_size=1)
        try:
            statements: list[str] = []
            async with pool.acquire() as connection:
                connection.add_query_logger(lambda query: statements.append(query.query))
                async with connection.transaction():
                    await connection.fetchval("SELECT 1")
            async with pool.acquire() as connection:
                assert not connection.is_in_transaction()
                assert await connection.fetchval("SELECT 2") == 2
        finally:
            await pool.close()
        assert any("RESET ALL" in s for s in statements) is resets, statements
