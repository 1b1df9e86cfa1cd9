"""Evaluation links: short unguessable tokens, stored only as a SHA-256 hash, expiring, used once."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from callback_queue import schema as t

TOKEN_BYTES = 15            # 120 bits of randomness, 20 URL-safe characters
LINK_PATH = "/r/"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def link_url(base: str, token: str) -> str:
    return base.rstrip("/") + LINK_PATH + token


class LinkState(enum.StrEnum):
    VALID = "valid"
    USED = "used"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Link:
    id: int
    callback_id: int
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None

    def state(self, now: datetime) -> LinkState:
        if self.used_at is not None:
            return LinkState.USED
        if now >= self.expires_at:
            return LinkState.EXPIRED
        return LinkState.VALID


def create_link(conn: Connection, callback_id: int, now: datetime, ttl: timedelta) -> str:
    """Store a new link for the callback (inside the caller's transaction); returns the raw token."""
    token = new_token()
    conn.execute(t.eval_links.insert().values(callback_id=callback_id, token_hash=hash_token(token), created_at=now,
                                              expires_at=now + ttl))
    return token


def find_link(conn: Connection, token: str) -> Link | None:
    if not token or len(token) > 64:
        return None
    row = conn.execute(sa.select(t.eval_links).where(t.eval_links.c.token_hash == hash_token(token))).first()
    if row is None:
        return None
    return Link(row.id, row.callback_id, row.created_at, row.expires_at, row.used_at)
