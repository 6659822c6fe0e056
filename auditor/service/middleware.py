"""The service's ASGI middleware (plain ASGI: cheap, and they see every request).

BodyLimit answers 413 for a request body over the limit; RememberKey turns ?key= on an HTML
page into the auditor_key cookie, so the page's links work (only a well-formed token: the
value goes into a header).
"""

from __future__ import annotations

from starlette.requests import Request

from auditor.service.auth import COOKIE_NAME, QUERY_PARAM, well_formed_token
from auditor.service.errors import error_response

__all__ = ["BodyLimit", "RememberKey"]


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
    """An HTML page opened with ?key=... sets the auditor_key cookie, so the page's links work."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith("/api"):
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
