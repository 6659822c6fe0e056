"""The service's ASGI middleware (plain ASGI: cheap, and they see every request).

SecurityHeaders gives every response a Content-Security-Policy, X-Frame-Options,
X-Content-Type-Options and Referrer-Policy; TrustedHosts answers 400 for a Host header that
does not name the service (DNS rebinding); BodyLimit answers 413 for a request body over the
limit; RememberKey turns ?key= on an HTML page into the auditor_key cookie, so the page's
links work (only a well-formed token: the value goes into a header).
"""

from __future__ import annotations

from typing import Sequence

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request

from auditor.service.auth import COOKIE_NAME, QUERY_PARAM, well_formed_token
from auditor.service.docs import BROWSER_PATHS
from auditor.service.errors import error_response

__all__ = ["PAGE_CSP", "BodyLimit", "RememberKey", "SecurityHeaders", "TrustedHosts"]

# What the pages need (reports/templates): their own inline <style> blocks, style attributes and
# one inline <script> (the sample report's), images as data: URIs and from the service, forms
# and fetches to the service itself; nothing from another site, no plugins, no framing.
PAGE_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'")
SECURITY_HEADERS = (("content-security-policy", PAGE_CSP), ("x-frame-options", "DENY"),
                    ("x-content-type-options", "nosniff"), ("referrer-policy", "no-referrer"))


class SecurityHeaders:
    """The SECURITY_HEADERS on every response, unless the response set its own (the API docs' CSP)."""

    def __init__(self, app):
        self.app = app
        self.headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(event):
            if event["type"] == "http.response.start":
                headers = list(event.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.headers if name not in present]
                event = {**event, "headers": headers}
            await send(event)

        await self.app(scope, receive, with_headers)


class TrustedHosts:
    """400 (a JSON error) for a request whose Host header is none of `hosts`: a page on another
    site that points its own DNS name at 127.0.0.1 cannot talk to a local service. The check is
    starlette's TrustedHostMiddleware; only its answer is replaced."""

    _PASSED = "auditor.trusted_host"  # set in the scope when the check let the request through

    def __init__(self, app, hosts: Sequence[str]):
        self.app, self.hosts = app, list(hosts)
        self.check = TrustedHostMiddleware(self._trusted, allowed_hosts=self.hosts, www_redirect=False)

    async def _trusted(self, scope, receive, send):
        scope[self._PASSED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.check(scope, receive, send)

        async def refused(event):  # the check's own "Invalid host header": answered as the service's error
            if scope.get(self._PASSED):
                return await send(event)
            if event["type"] == "http.response.start":
                host = Headers(scope=scope).get("host", "")[:200]
                await error_response(400, f"Host {host!r} is not a name of this service (it answers "
                                          f"{', '.join(self.hosts)}); set AUDITOR_TRUSTED_HOSTS to add "
                                          "one")(scope, receive, send)

        await self.check(scope, receive, refused)


class BodyLimit:
    """413 for a request body over `limit` bytes: by Content-Length up front; a body without
    one (chunked) is read up to the limit before the app sees it, then handed on."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_response(413, f"request body over the limit of {self.limit} bytes")
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.limit:
                return await too_big(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        events, size = [], 0
        while True:
            event = await receive()
            events.append(event)
            if event["type"] != "http.request":
                break
            size += len(event.get("body", b""))
            if size > self.limit:
                return await too_big(scope, receive, send)
            if not event.get("more_body", False):
                break
        replay = iter(events)

        async def buffered():
            event = next(replay, None)
            return event if event is not None else await receive()

        await self.app(scope, buffered, send)


class RememberKey:
    """An HTML page (or /api, /api/docs, /api/redoc: BROWSER_PATHS) opened with ?key=... sets the
    auditor_key cookie, so the page's links (and the docs' fetch of the schema) work."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["path"].startswith("/api") and scope["path"] not in BROWSER_PATHS):
            return await self.app(scope, receive, send)
        request = Request(scope)
        token = request.query_params.get(QUERY_PARAM)
        if not well_formed_token(token):  # echoed into Set-Cookie: never a value that could break the header
            return await self.app(scope, receive, send)

        async def with_cookie(event):
            if event["type"] == "http.response.start" and 200 <= event["status"] < 400:
                cookie = f"{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict"
                event = {**event, "headers": [*event.get("headers", []), (b"set-cookie", cookie.encode("latin-1"))]}
            await send(event)

        await self.app(scope, receive, with_cookie)
