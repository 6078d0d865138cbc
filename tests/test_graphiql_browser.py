"""GraphiQL works offline: a real headless Chromium (Debian's, driven by Playwright) opens the page
omnimember serves at /graphql with every request to anywhere but the server refused, runs a query
and sees the answer. Also: the page names only the service's own files, which need no key."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import ConsoleMessage, Response, Route, expect, sync_playwright

from api.ide import ASSETS
from tests.conftest import serving
from tests.server import Server

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (.ci/run installs it), never Playwright's download
# Without the background-networking flags Chromium reaches out on its own (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """The real server, in development mode (key-less loopback requests are an admin)."""
    server = Server(tmp_path / "home", database_url)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_graphiql_loads_and_runs_a_query_offline(server: Server) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    code = f"gq_{secrets.token_hex(4)}"
    made = server.graphql(
        f'mutation {{ createBrand(code: "{code}", name: "GraphiQL", group: "{code}") {{ __typename }} }}'
    )
    assert made == {"data": {"createBrand": {"__typename": "BrandCreated"}}}, made

    local = urlsplit(server.url).netloc
    refused: list[str] = []
    served: list[tuple[str, str]] = []
    problems: list[str] = []

    def offline(route: Route) -> None:
        if urlsplit(route.request.url).netloc == local:
            served.append((route.request.method, urlsplit(route.request.url).path))
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", offline)
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(str(error)))
            with page.expect_response(_introspection, timeout=30_000) as introspected:
                page.goto(f"{server.url}/graphql")
            schema = introspected.value.json()
            assert "errors" not in schema, schema  # GraphiQL has the schema: docs and completion work
            assert schema["data"]["__schema"]["queryType"]["name"] == "Query"

            editor = page.locator(".graphiql-query-editor .CodeMirror")
            expect(editor).to_be_visible(timeout=30_000)
            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text("{ brands { code } }")  # as a paste: no autocompletion in the way
            with page.expect_response(_the_query, timeout=30_000) as answered:
                page.locator(".graphiql-execute-button").click()
            brands = [brand["code"] for brand in answered.value.json()["data"]["brands"]]
            assert code in brands, brands

            # The pane shows the answer (its first lines: the editor draws only what is in view, and
            # the suite's shared database holds many brands).
            response = page.locator(".graphiql-response")
            expect(response).to_contain_text(f'"code": "{brands[0]}"', timeout=30_000)
            expect(response).not_to_contain_text('"errors"')
        finally:
            browser.close()

    assert refused == [], f"the page reached outside the service: {refused}"
    assert problems == [], problems
    assert ("GET", "/graphiql/assets/graphiql.js") in served, served
    assert ("POST", "/graphql") in served, served  # the query, to the path the page came from


def _introspection(response: Response) -> bool:
    return response.request.method == "POST" and "IntrospectionQuery" in (response.request.post_data or "")


def _the_query(response: Response) -> bool:
    return response.request.method == "POST" and "brands" in (response.request.post_data or "")


async def test_graphiql_page_names_only_the_services_own_files(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path, graphql_ide=True) as (http, _):
        page = await http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200
        links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
        assert links, page.text
        assert all(link.startswith(("graphiql/assets/", "data:")) for link in links), links
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for name in ("graphiql.js", "graphiql.css"):
            asset = await http.get(f"/graphiql/assets/{name}")
            assert asset.status_code == 200
            assert asset.content == (ASSETS / name).read_bytes()


async def test_graphiql_assets_need_no_key_and_exist_only_with_graphiql_on(database_url: str, tmp_path: Path) -> None:
    keyless = {"authorization": ""}  # an empty header is no header: no key
    async with serving(database_url, tmp_path / "on", graphql_ide=True) as (http, _):
        asset = await http.get("/graphiql/assets/graphiql.css", headers=keyless)
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith("text/css")
        page = await http.get("/graphql", headers={**keyless, "accept": "text/html"})
        assert page.status_code == 401  # the page, like every route but the probes and these files
        escape = await http.get("/graphiql/assets/../../graphql", headers={**keyless, "accept": "text/html"})
        assert escape.status_code in (401, 404)
    async with serving(database_url, tmp_path / "off", graphql_ide=False) as (http, _):
        assert (await http.get("/graphiql/assets/graphiql.css", headers=keyless)).status_code == 404


def test_the_built_assets_are_in_the_package() -> None:
    sizes = {path.name: path.stat().st_size for path in ASSETS.iterdir()}
    assert {"graphiql.js", "graphiql.css"} <= sizes.keys(), sizes
    text = (ASSETS / "graphiql.js").read_text() + (ASSETS / "graphiql.css").read_text()
    # No CDN in the bundle: nothing loads a script or a stylesheet from elsewhere.
    assert not re.search(r"unpkg|jsdelivr|cdnjs", text)
