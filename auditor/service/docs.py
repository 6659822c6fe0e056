"""The API's documentation: /api/openapi.json and the Swagger UI page at /api/docs, both behind
the `read` scope once the service requires keys (in local single-user mode they are open, like
everything else).

FastAPI's own documentation routes are public; create_app turns them off and mounts these.
The page may also be opened with ?key= (it is an HTML page: auditor.service.middleware sets
the key's cookie, which the page's fetch of /api/openapi.json then carries). Swagger UI loads
its script and style from a CDN, so the page has its own Content-Security-Policy, naming it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from auditor.service.auth import require_scope

__all__ = ["DOCS_CSP", "DOCS_PATH", "OPENAPI_PATH", "router"]

OPENAPI_PATH = "/api/openapi.json"
DOCS_PATH = "/api/docs"
_CDN = "https://cdn.jsdelivr.net"
_SWAGGER_JS = f"{_CDN}/npm/swagger-ui-dist@5/swagger-ui-bundle.js"
_SWAGGER_CSS = f"{_CDN}/npm/swagger-ui-dist@5/swagger-ui.css"
_FAVICON = "data:,"  # no request to a third site for an icon
DOCS_CSP = (f"default-src 'none'; script-src 'unsafe-inline' {_CDN}; style-src 'unsafe-inline' {_CDN}; "
            "img-src 'self' data:; connect-src 'self'; font-src data:; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'")

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_scope("read", browser=True))])


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
    """Swagger UI over the schema, with a Content-Security-Policy that allows its CDN and nothing else."""
    root_path = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(openapi_url=root_path + OPENAPI_PATH, title=f"{request.app.title} - Swagger UI",
                               swagger_js_url=_SWAGGER_JS, swagger_css_url=_SWAGGER_CSS, swagger_favicon_url=_FAVICON,
                               swagger_ui_parameters={"validatorUrl": None})  # no call to swagger.io's validator
    return HTMLResponse(page.body, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-store"})
