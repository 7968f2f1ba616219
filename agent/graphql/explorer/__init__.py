"""The GraphiQL explorer: `GET /graphql` from a browser, self-contained.

The page loads one script and one style sheet, both served by the agent under `/graphql/explorer/`
(`routes`), named by a hash of their content and cached for a year. They are GraphiQL, React and graphql-js
bundled by esbuild from the npm packages pinned in `package-lock.json` (`npm ci && npm run build` here, run
by devstack/install.sh and the Dockerfile) into `static/`; nothing is loaded from another origin, and the
Content-Security-Policy of the page and its assets (`CSP`) allows only the agent's own origin (fonts and
icons are inlined `data:` URLs in the style sheet). There is no inline script.

The management token is typed by the user in GraphiQL's Headers tab: it is not stored (headers are not
persisted), and the page's fetcher (`src/explorer.js`) sends it only to this origin's `/graphql`, which
`connect-src 'self'` enforces.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from dataclasses import dataclass
from html import escape
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")
PREFIX = "/graphql/explorer/"
TITLE = "rating-agent GraphQL"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TYPES = {".js": "text/javascript", ".css": "text/css"}
_SOURCES = ("explorer.js", "explorer.css")  # what `npm run build` writes into static/

routes = web.RouteTableDef()


@dataclass(frozen=True)
class Asset:
    name: str  # served as PREFIX + name: explorer.<hash>.js
    content_type: str
    body: bytes
    gzipped: bytes
    integrity: str  # subresource integrity of `body`


@functools.cache
def assets() -> dict[str, Asset] | None:
    """The built assets by source name (`explorer.js`, `explorer.css`), read once; None if not built."""
    found = {}
    for source in _SOURCES:
        path = STATIC / source
        if not path.is_file():
            return None
        body = path.read_bytes()
        stem, suffix = path.stem, path.suffix
        digest = hashlib.sha256(body).hexdigest()[:16]
        found[source] = Asset(
            name=f"{stem}.{digest}{suffix}", content_type=_TYPES[suffix], body=body,
            gzipped=gzip.compress(body, compresslevel=9, mtime=0),
            integrity="sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode(),
        )
    return found


@functools.cache
def _by_name() -> dict[str, Asset]:
    return {asset.name: asset for asset in (assets() or {}).values()}


def _page_html() -> str | None:
    built = assets()
    if built is None:
        return None
    script, style = built["explorer.js"], built["explorer.css"]
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(TITLE)}</title>\n"
        "<link rel=\"icon\" href=\"data:,\">\n"  # no favicon request
        f"<link rel=\"stylesheet\" href=\"{PREFIX}{style.name}\" integrity=\"{style.integrity}\">\n"
        f"<script defer src=\"{PREFIX}{script.name}\" integrity=\"{script.integrity}\"></script>\n"
        "</head>\n<body>\n"
        f"<div id=\"graphiql\"><div class=\"loading\">Loading {escape(TITLE)}…</div></div>\n"
        "</body>\n</html>\n"
    )


_MISSING = (
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>rating-agent GraphQL</title></head>"
    "<body><p>The GraphQL explorer is not built in this installation: run <code>devstack/install.sh</code> "
    "(or <code>npm ci &amp;&amp; npm run build</code> in <code>agent/graphql/explorer</code>). "
    "The API itself works: POST queries to <code>/graphql</code>.</p></body></html>\n"
)


def page() -> web.Response:
    """The explorer page (`GET /graphql` with `Accept: text/html`)."""
    html = _page_html()
    headers = {**_SECURITY, "Cache-Control": "no-store"}
    if html is None:
        return web.Response(text=_MISSING, status=503, content_type="text/html", headers=headers)
    return web.Response(text=html, content_type="text/html", headers=headers)


@routes.get(PREFIX + "{name}")
async def asset(request: web.Request) -> web.Response:
    found = _by_name().get(request.match_info["name"])
    if found is None:
        return web.Response(text="Not Found", status=404, content_type="text/plain", headers=_SECURITY)
    headers = {**_SECURITY, "Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    body = found.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = found.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type=found.content_type, charset="utf-8", headers=headers)
