"""The API's documentation: /api/openapi.json, Swagger UI at /api/docs and ReDoc at /api/redoc,
all three behind the `read` scope once the service requires keys (in local single-user mode
they are open, like everything else).

FastAPI's own documentation routes are public and load Swagger UI and ReDoc from a CDN, so a
service without internet access shows a blank page; create_app turns them off and mounts
these. Their scripts and styles are the ones the `fastapi-offline` package ships (Swagger UI
5, ReDoc 2; MIT), served from /api/docs/assets/ (public: nothing in them is the store's),
so the pages make no request to another host (ReDoc's one, for Redocly's logo, is cut out of
its script: REPLACED), and their Content-Security-Policy allows only the service itself
('self'; inline styles and data: images, which both libraries use). The pages hold no
inline script: Swagger UI is started by SWAGGER_INIT, served as an asset too. A page may also
be opened with ?key= (auditor.service.middleware sets the key's cookie, which the page's fetch
of /api/openapi.json then carries).
"""

from __future__ import annotations

import functools
import html
import importlib.metadata
import importlib.resources

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from auditor.service.auth import require_scope

__all__ = ["ASSETS_PATH", "BROWSER_PATHS", "DOCS_CSP", "DOCS_PATH", "INDEX_PATH", "OPENAPI_PATH", "REDOC_PATH",
           "assets_router", "router"]

INDEX_PATH = "/api"  # auditor.service.api.index
OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
REDOC_PATH = "/api/redoc"
ASSETS_PATH = "/api/docs/assets"
#: the /api paths people open in a browser: they accept the key's cookie and ?key= like the HTML pages
BROWSER_PATHS = (INDEX_PATH, INDEX_PATH + "/", DOCS_PATH, REDOC_PATH)
ASSETS_PACKAGE = "fastapi_offline"  # its static/ folder: swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")

#: starts Swagger UI on the page's #swagger-ui element, whose data-openapi names the schema
SWAGGER_INIT = """\
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapi, dom_id: "#swagger-ui", layout: "BaseLayout", deepLinking: true,
    showExtensions: true, showCommonExtensions: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
  });
});
"""
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png", "swagger-init.js")

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_scope("read", browser=True))])
assets_router = APIRouter(include_in_schema=False)  # public: the libraries' files and our init script


def _assets_version() -> str:
    try:
        return importlib.metadata.version("fastapi-offline")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _page(request: Request, title: str, head: str, body: str) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    assets = f"{root}{ASSETS_PATH}"
    version = _assets_version()
    text = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(request.app.title)} - {title}</title>
<link rel="icon" href="{assets}/favicon.png?v={version}">
{head.format(assets=assets, version=version)}
</head>
<body>
{body.format(assets=assets, version=version, openapi=html.escape(root + OPENAPI_PATH))}
</body>
</html>
"""
    return HTMLResponse(text, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-store"})


@router.get(OPENAPI_PATH)
def openapi(request: Request) -> JSONResponse:
    """The OpenAPI schema (with the mount point as its server when the service runs below one)."""
    schema = request.app.openapi()
    root_path = request.scope.get("root_path", "").rstrip("/")
    if root_path and root_path not in {server.get("url") for server in schema.get("servers", [])}:
        schema = {**schema, "servers": [{"url": root_path}, *schema.get("servers", [])]}
    return JSONResponse(schema)


@router.get(DOCS_PATH)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI over the schema, from the service's own copy of its files."""
    return _page(request, "Swagger UI", '<link rel="stylesheet" href="{assets}/swagger-ui.css?v={version}">',
                 '<div id="swagger-ui" data-openapi="{openapi}"></div>\n'
                 '<script src="{assets}/swagger-ui-bundle.js?v={version}"></script>\n'
                 '<script src="{assets}/swagger-init.js?v={version}"></script>')


@router.get(REDOC_PATH)
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over the schema, from the service's own copy of its file (no web fonts)."""
    return _page(request, "ReDoc", "", '<redoc spec-url="{openapi}"></redoc>\n'
                                       '<script src="{assets}/redoc.standalone.js?v={version}"></script>')


#: ReDoc's side menu shows Redocly's logo from their CDN (an image request to another site on every
#: load): it is served with an empty inline image in its place (the "API docs by Redocly" link stays)
REPLACED = {"redoc.standalone.js": ((b"https://cdn.redoc.ly/redoc/logo-mini.svg",
                                     b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg'/%3E"),)}


@functools.lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    if name == "swagger-init.js":
        return SWAGGER_INIT.encode()
    content = (importlib.resources.files(ASSETS_PACKAGE) / "static" / name).read_bytes()
    for old, new in REPLACED.get(name, ()):
        content = content.replace(old, new)
    return content


@assets_router.get(ASSETS_PATH + "/{name}")
def asset(name: str = Path(max_length=64)) -> Response:
    """One of the docs pages' files (cached by browsers: their URLs carry the package's version)."""
    if name not in ASSETS:
        raise HTTPException(404, f"no documentation asset {name!r}")
    return Response(_asset(name), media_type=_MEDIA_TYPES[name[name.rindex("."):]],
                    headers={"Cache-Control": "public, max-age=86400"})
