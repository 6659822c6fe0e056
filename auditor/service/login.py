"""Signing in from a browser: GET /login shows a form, POST /login checks the API key in it and
keeps it in the HttpOnly ``auditor_key`` cookie (the one auditor.service.auth reads on HTML
pages), then returns to the page asked for. So a person never puts the key in a page URL,
where it would stay in the browser's history and the server's logs; ``?key=`` remains for
scripted use. A 401 page (auditor.service.pages) holds the same form.

The form is refused (403) when the browser says it was sent from another site (its Origin
header names another host): another site must not sign a visitor in with a key of its own.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from auditor.service.auth import COOKIE_NAME, QUERY_PARAM, AccessDenied, well_formed_token
from reports import render

__all__ = ["local_path", "return_path", "router"]

router = APIRouter(include_in_schema=False)  # open to all: it is how a key gets in
MAX_FORM_BYTES = 16 * 1024


def _links(request: Request) -> render.Links:
    return render.Links(request.scope.get("root_path", ""))


def local_path(value: str | None, root: str = "") -> str:
    """`value` if it is a path on this service (starts with one '/', no scheme, no host), else
    the service's root: the form never sends a browser to another site."""
    value = (value or "").strip()
    parts = urlsplit(value)
    if not value.startswith("/") or value.startswith("//") or "\\" in value or parts.scheme or parts.netloc:
        return (root or "") + "/"
    return value


def return_path(request: Request) -> str:
    """The page `request` asked for, as a path to come back to: without a ?key= parameter."""
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != QUERY_PARAM])
    return request.scope.get("root_path", "") + request.url.path + (f"?{query}" if query else "")


def _page(request: Request, next_path: str, message: str | None = None, status: int = 200) -> HTMLResponse:
    return HTMLResponse(render.render_login(next_path, message, _links(request)), status_code=status,
                        headers={"Cache-Control": "no-store"})


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = Query("/", max_length=2000)):
    return _page(request, local_path(next, request.scope.get("root_path", "")))


@router.post("/login")
async def login(request: Request):
    root = request.scope.get("root_path", "")
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        return _page(request, root + "/", f"this form was sent from another site ({origin[:100]}): refused", 403)
    body = (await request.body())[:MAX_FORM_BYTES].decode("utf-8", "replace")
    form = parse_qs(body, max_num_fields=8)
    token, next_path = (form.get("key") or [""])[0].strip(), local_path((form.get("next") or ["/"])[0], root)
    ring = request.app.state.keys
    await ring.refresh_async()
    if not ring.required:
        return RedirectResponse(next_path, status_code=303)  # local single-user mode: no key to keep
    try:
        ring.check(token, "read")
    except AccessDenied as exc:
        return _page(request, next_path, exc.message, exc.status)
    if not well_formed_token(token):  # checked above; the cookie header must never carry anything else
        return _page(request, next_path, "malformed API key (expected pspc_<id>_<secret>)", 401)
    response = RedirectResponse(next_path, status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE_NAME, token, path="/", httponly=True, samesite="strict")
    return response
