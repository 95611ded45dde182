"""The live page (``GET /``, ``/page.css``, ``/page.js``) and the notice at ``/docs`` and ``/redoc``.

The page's files ship inside the package (``telemetry/endpoint/page/``, package data) and are
read once, when the app is built. They carry no data, so they are served without the token;
the page then reads the protected routes with it. A strict Content-Security-Policy makes the
browser itself refuse anything from outside the agent's address, inline scripts included.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a public CDN: blank on an
offline cluster, and a request to a third party from every reader. Bundling them would make the
package about ten times the page's size for a view of ``/openapi.json``, so these routes say
that interactive docs are off, why, and where the schema is.

Imports FastAPI, so only the app builder imports it.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the route functions' annotations.
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

__all__ = ["PAGE_FILES", "CONTENT_SECURITY_POLICY", "page_file", "add_page_routes", "add_docs_notice"]

# route -> (file in telemetry/endpoint/page/, media type)
PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/page.css": ("page.css", "text/css"),
    "/page.js": ("page.js", "text/javascript"),
}

# Everything from the agent's own address and nothing else: no inline script, no frames, and a
# form that cannot be submitted (the token form is handled by the script, so a broken script
# can never put the token in an address).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small and read once per visit: always revalidated, so an upgraded agent serves its page.
    "Cache-Control": "no-cache",
}

_DOCS_NOTICE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Elastiscope agent: API docs</title><link rel="icon" href="data:,">
<link rel="stylesheet" href="page.css"></head>
<body><main class="panel">
<h1>Interactive API docs are off</h1>
<p>Swagger UI and ReDoc load their scripts from a public CDN: on a cluster without Internet
access they would stay blank, and this agent never makes your browser fetch from anywhere but
itself.</p>
<p>The API's schema is at <a href="openapi.json">/openapi.json</a> (OpenAPI 3.1): open it in any
OpenAPI viewer you have locally. Every route and field is also described in the project's
<code>docs/reference.md</code>. The job itself is on the <a href="./">live page</a>.</p>
</main></body></html>
"""


def page_file(name: str) -> bytes:
    """One of the page's files, as the installed package carries it."""
    return resources.files("telemetry.endpoint").joinpath("page", name).read_bytes()


def _text_response(media_type: str) -> dict:
    return {200: {"description": "the file", "content": {media_type: {"schema": {"type": "string"}}}}}


def _serving(body: bytes, media_type: str):
    """A route function answering ``body`` (taking no parameters: FastAPI reads them as query)."""
    def serve() -> Response:
        return Response(body, media_type=f"{media_type}; charset=utf-8", headers=_HEADERS)

    return serve


def add_page_routes(app: FastAPI) -> None:
    """``/``, ``/page.css`` and ``/page.js``: open to all (no data in them)."""
    for path, (name, media_type) in PAGE_FILES.items():
        app.add_api_route(
            path, _serving(page_file(name), media_type), methods=["GET"], response_class=Response,
            summary="The live page" if path == "/" else f"The live page's {name}",
            responses=_text_response(media_type),
        )


def add_docs_notice(app: FastAPI) -> None:
    """``/docs`` and ``/redoc``: why interactive docs are off, and the schema's address."""
    def notice() -> HTMLResponse:
        return HTMLResponse(_DOCS_NOTICE, headers=_HEADERS)

    for path in ("/docs", "/redoc"):
        app.add_api_route(path, notice, methods=["GET"], response_class=HTMLResponse,
                          summary="Why interactive API docs are off", responses=_text_response("text/html"))
