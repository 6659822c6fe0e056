"""Responses about finished runs kept in memory, and ETags on every cached-or-computed body.

A complete run's stored data never changes, so its sources, maps and report are computed
once (ResponseCache, least recently used first out). `cached_response` answers from the
cache when the run is complete, computes otherwise, and adds an ETag either way (so
If-None-Match answers 304).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from auditor.store import catalog

__all__ = ["ResponseCache", "cached_response", "etag", "with_etag"]


class ResponseCache:
    """Responses about FINISHED runs, kept in memory (least recently used first out, at most
    `max_bytes`): a complete run's stored data never changes, so its sources, maps and
    report are computed once. Concurrent requests for the same missing entry wait for the
    one computing it. Runs still being written (or failed, which may be resumed) are never
    cached."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._computing: dict = {}
        self._complete: set[int] = set()
        self.hits = self.misses = 0

    @property
    def size(self) -> int:
        """Bytes of the cached bodies."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def known_final(self, run_id: int) -> bool:
        """Whether run `run_id` is known complete already (answered without reading the store)."""
        return int(run_id) in self._complete

    def run_is_final(self, settings, run_id: int) -> bool:
        """Whether run `run_id` is complete (read from the store until it is, then remembered)."""
        if self.known_final(run_id):
            return True
        if catalog.run_status(settings.db_path, run_id, timeout=settings.lock_timeout) == "complete":
            self._complete.add(int(run_id))
            return True
        return False

    def peek(self, key) -> tuple[bytes, str, str] | None:
        """The cached entry, or None (never waits: safe on the event loop)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        return None

    def get_or_compute(self, key, compute: Callable[[], tuple]) -> tuple:
        while True:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return self._entries[key]
                waiting = self._computing.get(key)
                if waiting is None:
                    self._computing[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # someone else computes it (or fails: then try ourselves)
        try:
            value = compute()
            with self._lock:
                size = len(value[0])
                if size <= self.max_bytes // 4:
                    self._entries[key] = value
                    self._size += size
                    while self._size > self.max_bytes:
                        _, (old, *_) = self._entries.popitem(last=False)
                        self._size -= len(old)
            return value
        finally:
            with self._lock:
                self._computing.pop(key).set()


def etag(body: bytes) -> str:
    """A strong ETag for `body` (blake2b, 96 bits)."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def with_etag(body: bytes, media_type: str) -> tuple[bytes, str, str]:
    return body, media_type, etag(body)


async def cached_response(request: Request, run_id: int, compute: Callable[[], tuple[bytes, str]], *,
                          by_run: bool = True) -> Response:
    """`compute()` -> (body, media type), from the cache when run `run_id` is complete; with an
    ETag (If-None-Match answers 304). A cache hit is answered on the event loop; reading the
    store and computing run in a worker thread. by_run=False: never from this cache (an answer
    that changes after its run completes, as the report does with later verdicts and
    counterfactuals: `compute` caches by the sample's state itself), still with its ETag."""
    settings = request.app.state.settings
    cache: ResponseCache = request.app.state.cache
    final = by_run and (cache.known_final(run_id) or await run_in_threadpool(cache.run_is_final, settings, run_id))
    if final:  # cached with its ETag: a hit costs no hashing of the body
        key = (request.url.path, tuple(sorted(request.query_params.multi_items())))
        found = cache.peek(key)
        body, media_type, tag = found if found is not None else await run_in_threadpool(
            cache.get_or_compute, key, lambda: with_etag(*compute()))
        headers = {"Cache-Control": "private, max-age=3600", "ETag": tag}
    else:
        body, media_type, tag = with_etag(*await run_in_threadpool(compute))
        headers = {"Cache-Control": "no-cache", "ETag": tag}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
