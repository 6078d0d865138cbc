"""GraphiQL at GET /graphql, from files inside the package: api/graphiql/dist, bundled from the npm
project beside it by `bash api/graphiql/build.sh` and committed, so installing omnimember needs no
node. The page loads nothing from outside the service (its policy forbids it), so it works offline.

Served only when GraphiQL is on (Settings.ide_on). The static files hold no data and are open to
requests without a key (api.auth); the page itself, at /graphql, is behind the key like the rest."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "graphiql" / "dist"
ASSETS_PATH = "/graphiql/assets"
# Same origin only; GraphiQL's editors add <style> elements, and its fonts are data: URLs in its CSS.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; font-src 'self' data:; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# The asset URLs are relative to /graphql, so the page also works behind a proxy's path prefix; the
# version (a hash of the files) makes a browser fetch them anew after an upgrade.
_PAGE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>omnimember GraphiQL</title>
    <link rel="icon" href="data:," />
    <link rel="stylesheet" href="{assets}/graphiql.css?v={version}" />
  </head>
  <body>
    <div id="graphiql">Loading GraphiQL...</div>
    <script src="{assets}/graphiql.js?v={version}"></script>
  </body>
</html>
"""


@functools.cache
def page() -> str:
    digest = hashlib.sha256()
    for name in ("graphiql.js", "graphiql.css"):
        digest.update((ASSETS / name).read_bytes())
    return _PAGE.format(assets=ASSETS_PATH.lstrip("/"), version=digest.hexdigest()[:12])


async def render(request: Request) -> HTMLResponse:
    return HTMLResponse(page(), headers={"content-security-policy": POLICY})


def assets() -> Mount:
    return Mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="graphiql-assets")
