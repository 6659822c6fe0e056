"""API key rows (table ``api_keys``): the report service's keys as the store holds them.

Only sha256 of a key's token is stored (column ``hash``); the token itself is made and
hashed by auditor.service.auth, which also checks requests against these rows. Scopes are
``read`` and ``submit``; submit implies read and is stored with it, so listings say so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from auditor.errors import NotFoundError, StoreError
from auditor.store import database
from auditor.store.recorder import utcnow

__all__ = ["SCOPES", "ApiKey", "grants", "has_active_keys", "insert_key", "key_with_hash", "keys_with_hashes",
           "list_keys", "next_key_id", "normalise_scopes", "revoke_key", "touch_key"]

SCOPES = ("read", "submit")
_COLUMNS = "id, name, scopes, created_at, revoked_at, last_used_at"


@dataclass(frozen=True)
class ApiKey:
    """One stored key, without its secret."""

    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)


def grants(scopes: Iterable[str], needed: str) -> bool:
    """Whether `scopes` cover `needed` (submit implies read)."""
    scopes = set(scopes)
    return needed in scopes or (needed == "read" and "submit" in scopes)


def normalise_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Known scopes in SCOPES order, submit with read; StoreError for unknown or no scopes."""
    scopes = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise StoreError(f"unknown scope(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(SCOPES)} (submit implies read)")
    if "submit" in scopes:
        scopes += ("read",)  # submit implies read: stored explicitly, so listings say so
    return tuple(s for s in SCOPES if s in scopes)


def _key(row) -> ApiKey:
    return ApiKey(int(row[0]), row[1], tuple(s for s in row[2].split(",") if s), row[3], row[4], row[5])


def next_key_id(db_path: str | os.PathLike, timeout: float = database.DEFAULT_TIMEOUT) -> int:
    """A fresh key id (the token embeds it, so it is drawn before the row is written)."""
    with database.connect(db_path, timeout=timeout, check_schema=True) as conn:
        return int(conn.execute("SELECT nextval('api_key_ids')").fetchone()[0])


def insert_key(db_path: str | os.PathLike, key_id: int, name: str, scopes: Iterable[str], token_hash: str,
               timeout: float = database.DEFAULT_TIMEOUT) -> ApiKey:
    """Store key `key_id` (from next_key_id) with the hash of its token; returns the row."""
    name = (name or "").strip()
    if not name:
        raise StoreError("an API key needs a name (who or what uses it)")
    scopes = normalise_scopes(scopes)
    with database.connect(db_path, timeout=timeout, check_schema=True) as conn:
        conn.execute("INSERT INTO api_keys (id, name, scopes, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                     [int(key_id), name, ",".join(scopes), token_hash, utcnow()])
        row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [int(key_id)]).fetchone()
    return _key(row)


def list_keys(db_path: str | os.PathLike, include_revoked: bool = True,
              timeout: float = database.DEFAULT_TIMEOUT) -> list[ApiKey]:
    """Every key (never its secret), oldest first."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY id").fetchall()
    return [_key(r) for r in rows]


def revoke_key(db_path: str | os.PathLike, key_id: int, timeout: float = database.DEFAULT_TIMEOUT) -> ApiKey:
    """Revoke a key (the service re-reads keys within a second). Revoking twice keeps the first time."""
    with database.connect(db_path, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [int(key_id)]).fetchone()
        if row is None:
            raise NotFoundError(f"{db_path}: no API key {key_id}")
        if row[4] is None:
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [utcnow(), int(key_id)])
            row = conn.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [int(key_id)]).fetchone()
    return _key(row)


def has_active_keys(db_path: str | os.PathLike, timeout: float = database.DEFAULT_TIMEOUT) -> bool:
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        return bool(conn.execute("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])


def key_with_hash(db_path: str | os.PathLike, key_id: int,
                  timeout: float = database.DEFAULT_TIMEOUT) -> tuple[ApiKey, str] | None:
    """(key, stored token hash) of key `key_id`, revoked or not; None if there is no such key."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        row = conn.execute(f"SELECT {_COLUMNS}, hash FROM api_keys WHERE id = ?", [int(key_id)]).fetchone()
    return None if row is None else (_key(row[:6]), row[6])


def keys_with_hashes(db_path: str | os.PathLike,
                     timeout: float = database.DEFAULT_TIMEOUT) -> dict[int, tuple[str, ApiKey]]:
    """Every key, revoked or not: id -> (stored token hash, key)."""
    with database.connect(db_path, read_only=True, timeout=timeout, check_schema=True) as conn:
        rows = conn.execute(f"SELECT {_COLUMNS}, hash FROM api_keys").fetchall()
    return {int(r[0]): (r[6], _key(r[:6])) for r in rows}


def touch_key(db_path: str | os.PathLike, key_id: int, timeout: float = database.DEFAULT_TIMEOUT) -> None:
    """Record that key `key_id` was used now."""
    with database.connect(db_path, timeout=timeout) as conn:
        conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [utcnow(), int(key_id)])
