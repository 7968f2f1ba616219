"""The GraphiQL explorer is self-contained: headless Chromium with no network beyond loopback opens it on a
real `serve` (the agent port forwards it to the manager), types a query and the management token, runs it
and reads the result on screen; no request leaves the agent's origin and the CSP blocks nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from agent.graphql import explorer
from tests.conftest import AgentProcess, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "explorer-test-token-1f2e3d"
SETUP = 'mutation { createCarrier(carrier_tag:"explorer-carrier", host:"gw", port:5060) { id } }'
LISTING = "{ allCarriers { carrier_tag } }"
TIMEOUT = 20.0  # seconds any one page condition may take

pytestmark = pytest.mark.timeout(120)


def test_the_assets_are_built():
    """devstack/install.sh (so `make test` and CI) builds them; without them the page says how."""
    assert explorer.assets() is not None, "explorer assets not built: run devstack/install.sh"


def test_without_the_assets_the_page_says_how_to_build_them(monkeypatch):
    monkeypatch.setattr(explorer, "assets", lambda: None)
    response = explorer.page()
    assert response.status == 503 and "devstack/install.sh" in response.text
    assert response.headers["Content-Security-Policy"] == explorer.CSP


@pytest.fixture
async def served(stack, tmp_path):
    """A real `serve` (one worker forwarding to the manager, plus --management-port) with a token."""
    if explorer.assets() is None:
        pytest.fail("explorer assets not built: run devstack/install.sh")
    await stack.database.execute("TRUNCATE customers, sellers, invoices CASCADE")
    agent = AgentProcess(stack.redis_url, stack.database_url, tmp_path, workers=1, log_level="WARNING",
                         management_token=TOKEN, management_port=free_port())
    agent.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(agent.url + "/graphql", json={"query": SETUP},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as reply:
                assert reply.status == 200, await reply.text()
        yield agent
    finally:
        agent.stop()


# --- HTTP: page, assets, headers, both ports -----------------------------------------------------------------

async def test_page_and_assets_on_the_agent_port_and_the_management_port(served):
    management = f"http://127.0.0.1:{served.env['RATING_MANAGEMENT_PORT']}"
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        for origin in (served.url, management):
            async with session.get(origin + "/graphql", headers={"Accept": "text/html"}) as reply:
                assert reply.status == 200
                assert reply.content_type == "text/html"
                assert reply.headers["Content-Security-Policy"] == explorer.CSP
                assert reply.headers["Cache-Control"] == "no-store"
                html = await reply.text()
            assert "<script>" not in html and "http" not in html  # no inline script, no other origin
            for source, asset in explorer.assets().items():
                assert f'"{explorer.PREFIX}{asset.name}"' in html and asset.integrity in html
                async with session.get(origin + explorer.PREFIX + asset.name) as reply:
                    assert reply.status == 200, source
                    assert reply.headers["Content-Encoding"] == "gzip"  # the client asks for it
                    assert "immutable" in reply.headers["Cache-Control"]
                    assert reply.headers["Content-Security-Policy"] == explorer.CSP
                    assert reply.headers["X-Content-Type-Options"] == "nosniff"
                    assert await reply.read() == asset.body
            async with session.get(origin + explorer.PREFIX + "explorer.0000000000000000.js") as reply:
                assert reply.status == 404
    csp = dict(part.strip().split(" ", 1) for part in explorer.CSP.split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and "unsafe" not in explorer.CSP and "http" not in explorer.CSP


# --- the browser ---------------------------------------------------------------------------------------------

class Browser:
    """Headless Chromium driven over the DevTools protocol (one page, flat session), on loopback only."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws = None
        self.page = None  # the page's session id
        self.events: list[dict] = []
        self._ids = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--mute-audio", "--window-size=1280,900",
             # nothing but loopback: every other name fails to resolve, every other address goes to a dead proxy
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.profile / "chromium.log", "wb"), start_new_session=True,
        )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not (active.is_file() and len(active.read_text().split()) >= 2):
            assert self.process.poll() is None, (self.profile / "chromium.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.05)
        port, path = active.read_text().split()[:2]
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.page = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            await self.call(f"{domain}.enable")
        # Reports every CSP violation of the page (CDP scripts are not subject to the page's CSP).
        await self.call("Page.addScriptToEvaluateOnNewDocument", source=(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation', e => window.__violations.push("
            "e.violatedDirective + ' ' + e.blockedURI));"))

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id"), None) if "id" in data else None
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, session: str | None = None, **params) -> dict:
        self._ids += 1
        message = {"id": self._ids, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, TIMEOUT)

    async def call(self, method: str, **params) -> dict:
        return await self.send(method, self.page, **params)

    async def evaluate(self, expression: str):
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    async def wait_for(self, expression: str, what: str):
        """Polls `expression` until it is truthy (at most TIMEOUT seconds); returns its value."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = await self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise AssertionError(f"timed out waiting for {what}; page shows: {text!r}")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        box = await self.wait_for(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e || !e.offsetParent) return null; const r = e.getBoundingClientRect();"
            " return {x: r.left + r.width / 2, y: r.top + Math.min(r.height / 2, 10)}; })()", selector)
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left",
                            clickCount=1)

    async def type_into(self, editor: str, text: str) -> None:
        """Replaces the text of the CodeMirror editor under `editor` as a person would: click, Ctrl-A, type."""
        await self.click(f"{editor} .CodeMirror-lines")
        key = {"key": "a", "code": "KeyA", "windowsVirtualKeyCode": 65, "modifiers": 2}
        await self.call("Input.dispatchKeyEvent", type="keyDown", commands=["selectAll"], **key)
        await self.call("Input.dispatchKeyEvent", type="keyUp", **key)
        await self.call("Input.insertText", text=text)
        shown = await self.evaluate(
            f"document.querySelector({json.dumps(editor + ' .CodeMirror')}).CodeMirror.getValue()")
        assert shown == text, shown

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
async def browser(tmp_path):
    if CHROMIUM is None:
        message = "chromium is not installed (devstack/install.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    browser = Browser(tmp_path / "chromium")
    try:
        await browser.start()
        yield browser
    finally:
        await browser.close()


async def test_explorer_runs_a_query_offline_in_chromium(served, browser):
    origin = served.url  # the agent port: page and assets are forwarded to the manager
    started = time.monotonic()
    await browser.call("Page.navigate", url=origin + "/graphql")
    await browser.wait_for("!!document.querySelector('.graphiql-query-editor .CodeMirror')", "GraphiQL's editor")
    await browser.wait_for("!document.querySelector('.loading')", "the loading notice to go")

    # Without the token the management query is refused, and the page shows the refusal.
    response = ".graphiql-response"
    await browser.type_into(".graphiql-query-editor", LISTING)
    await browser.click(".graphiql-execute-button")
    await browser.wait_for(f"document.querySelector('{response}').innerText.includes('Unauthorized')",
                           "the refusal on screen")

    # With the token typed in the Headers tab, the same query lists the catalog.
    await browser.click(".graphiql-editor-tools button[data-name='headers']")
    await browser.type_into(".graphiql-editor-tool .graphiql-editor:not(.hidden)",
                            json.dumps({"Authorization": f"Bearer {TOKEN}"}))
    await browser.click(".graphiql-execute-button")
    shown = await browser.wait_for(
        f"(() => {{ const t = document.querySelector('{response}').innerText;"
        " return t.includes('explorer-carrier') && t; })()", "the catalog listing on screen")
    assert "allCarriers" in shown and "Unauthorized" not in shown
    shot = await browser.call("Page.captureScreenshot", format="png")  # kept in the test's folder, to look at
    (browser.profile.parent / "explorer.png").write_bytes(base64.b64decode(shot["data"]))

    # Nothing blocked, nothing fetched from anywhere but the agent, the token sent only to its /graphql.
    assert await browser.evaluate("window.__violations") == []
    requests = [e["params"]["request"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
    urls = [r["url"] for r in requests]
    assert origin + "/graphql" in urls and all(u.startswith(origin + "/") or u.startswith("data:") for u in urls), urls
    with_token = [r["url"] for r in requests
                  if any(k.lower() == "authorization" for k in r.get("headers", {}))]
    assert with_token and set(with_token) == {origin + "/graphql"}, with_token
    failed = [e["params"] for e in browser.events if e["method"] == "Network.loadingFailed"]
    assert not failed, failed
    problems = [(entry["text"], entry.get("url")) for entry in
                (e["params"]["entry"] for e in browser.events if e["method"] == "Log.entryAdded")
                if entry["level"] == "error" and "status of 401" not in entry["text"]]  # the refused query
    assert not problems, problems
    assert time.monotonic() - started < 60
