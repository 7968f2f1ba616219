"""loadtest/echo.py --canyan, the zero-cost agent of sip_load.py's `zero` mode: what Kamailio's configuration
(kamailio/rating.cfg) reads of each answer is there, and keep-alive requests sent together are answered in
order."""

import asyncio
import sys

import orjson

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "loadtest"))

import echo  # noqa: E402


async def test_the_zero_agent_authorizes_with_its_carrier_and_answers_begin_end_rollback_ok_in_order():
    server = await asyncio.get_running_loop().create_server(echo.CanyanProtocol, "127.0.0.1", 0)
    echo.CanyanProtocol.answers = echo.canyan_answers("UDP:127.0.0.1:5099")
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"transaction_tag":"t","account_tag":"a"}'
        requests = b"".join(
            b"POST /v1/" + path + b" HTTP/1.1\r\nHost: x\r\ncontent-length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body for path in (b"authorization", b"begin_transaction", b"end_transaction",
                                               b"rollback_transaction", b"nothing"))
        # split mid-request: a request's head and body may arrive in any pieces
        writer.write(requests[:37])
        await writer.drain()
        writer.write(requests[37:])
        answers = []
        for _ in range(5):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            answers.append((head.split(b" ")[1], await reader.readexactly(length)))
        writer.close()
    finally:
        server.close()
    status, authorization = answers[0]
    answer = orjson.loads(authorization)
    assert status == b"200" and answer["authorized"] is True and answer["max_available_units"] > 0
    assert answer["carriers"] == ["UDP:127.0.0.1:5099"]
    assert answers[1:4] == [(b"200", b'{"ok":true}')] * 3
    assert answers[4][0] == b"404"
