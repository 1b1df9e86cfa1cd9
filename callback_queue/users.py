"""Users of the console and the API: roles, bearer tokens and console sessions.

A token or session id is 256 random bits handed to the user once; only its
SHA-256 digest is stored, so a copy of the database lets nobody in. (A slow
password hash buys nothing for values that cannot be guessed, and a digest can
be looked up by index on every request.)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .clock import Clock
from .errors import CallbackdError, NotFound
from .store import Store

TOKEN_PREFIX = "cbd_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Role(enum.StrEnum):
    OPERATOR = "operator"
    ADMIN = "admin"


class UserExists(CallbackdError):
    """A user of that name exists already."""


class UserDisabled(CallbackdError):
    """That user is disabled: enable them first (`callbackd users enable NAME`)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    role: Role
    created_at: datetime
    disabled_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @classmethod
    def from_row(cls, row: Any) -> User:
        m = row._mapping
        return cls(id=m["id"], name=m["name"], role=Role(m["role"]), created_at=m["created_at"],
                   disabled_at=m["disabled_at"])


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def csrf_token(session_secret: str) -> str:
    """The console's CSRF token: derived from the session id, which only the browser holds."""
    return hmac.new(session_secret.encode(), b"callbackd-csrf", hashlib.sha256).hexdigest()[:40]


def csrf_ok(session_secret: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(session_secret), given or "")


_USER_COLS = (t.users.c.id, t.users.c.name, t.users.c.role, t.users.c.created_at, t.users.c.disabled_at)
#: bumped each time tokens stop working in this process (a user disabled): the API's short-lived cache of
#: token lookups (daemon/http/auth.py) starts afresh when it changes
revocations = 0


class Users:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # -- users and tokens ------------------------------------------------------------
    def add(self, name: str, role: Role | str) -> tuple[User, str]:
        """Create a user with one API token; the token is returned once and never stored."""
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a user name (letters, digits, . _ @ -; at most 64)")
        role = Role(role)
        now = self.clock.now()
        token = new_secret(TOKEN_PREFIX)
        try:
            with self.store.write() as conn:
                uid = conn.execute(t.users.insert().values(name=name, role=role.value, created_at=now)
                                   .returning(t.users.c.id)).scalar_one()
                conn.execute(t.api_tokens.insert().values(user_id=uid, token_hash=digest(token), created_at=now))
        except IntegrityError as exc:
            raise UserExists(f"user {name!r} exists already") from exc
        return User(uid, name, role, now), token

    def new_token(self, name: str) -> str:
        """Issue another token for a user (the old ones stay valid until revoked); refused for a disabled user,
        whose token would not work."""
        user = self.get(name)
        token = new_secret(TOKEN_PREFIX)
        with self.store.write() as conn:
            # read in the writing transaction: a user disabled meanwhile gets no token
            if conn.execute(sa.select(t.users.c.disabled_at).where(t.users.c.id == user.id)).scalar() is not None:
                raise UserDisabled(f"user {name!r} is disabled: enable them first (`callbackd users enable {name}`)")
            conn.execute(t.api_tokens.insert().values(user_id=user.id, token_hash=digest(token),
                                                      created_at=self.clock.now()))
        return token

    def get(self, name: str) -> User:
        with self.store.read() as conn:
            row = conn.execute(sa.select(*_USER_COLS).where(t.users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user {name!r}")
        return User.from_row(row)

    def list(self) -> list[User]:
        with self.store.read() as conn:
            return [User.from_row(r) for r in conn.execute(sa.select(*_USER_COLS).order_by(t.users.c.name))]

    def disable(self, name: str) -> User:
        """Disable a user: their tokens stop working and their sessions end."""
        user = self.get(name)
        now = self.clock.now()
        with self.store.write() as conn:
            conn.execute(sa.update(t.users).where(t.users.c.id == user.id).values(disabled_at=now))
            conn.execute(sa.update(t.api_tokens).where(t.api_tokens.c.user_id == user.id,
                                                       t.api_tokens.c.revoked_at.is_(None)).values(revoked_at=now))
            conn.execute(sa.delete(t.user_sessions).where(t.user_sessions.c.user_id == user.id))
        global revocations
        revocations += 1
        return self.get(name)

    def enable(self, name: str) -> User:
        """Enable a disabled user again. Their old tokens stay revoked: they need a new one (new_token)."""
        user = self.get(name)
        with self.store.write() as conn:
            conn.execute(sa.update(t.users).where(t.users.c.id == user.id).values(disabled_at=None))
        return self.get(name)

    def by_token(self, token: str) -> User | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self.store.read() as conn:
            row = conn.execute(
                sa.select(*_USER_COLS).join(t.api_tokens, t.api_tokens.c.user_id == t.users.c.id)
                .where(t.api_tokens.c.token_hash == digest(token), t.api_tokens.c.revoked_at.is_(None),
                       t.users.c.disabled_at.is_(None))
            ).first()
        return User.from_row(row) if row else None

    # -- console sessions ------------------------------------------------------------
    def login(self, name: str, token: str, lifetime: timedelta) -> tuple[User, str] | None:
        """Check a name and token; on success open a session and return its id (once)."""
        user = self.by_token(token)
        if user is None or not hmac.compare_digest(user.name, name):
            return None
        session = new_secret()
        now = self.clock.now()
        with self.store.write() as conn:
            conn.execute(sa.delete(t.user_sessions).where(t.user_sessions.c.expires_at < now))
            conn.execute(t.user_sessions.insert().values(session_hash=digest(session), user_id=user.id,
                                                         created_at=now, expires_at=now + lifetime))
        return user, session

    def by_session(self, session: str) -> User | None:
        with self.store.read() as conn:
            row = conn.execute(
                sa.select(*_USER_COLS).join(t.user_sessions, t.user_sessions.c.user_id == t.users.c.id)
                .where(t.user_sessions.c.session_hash == digest(session),
                       t.user_sessions.c.expires_at > self.clock.now(), t.users.c.disabled_at.is_(None))
            ).first()
        return User.from_row(row) if row else None

    def logout(self, session: str) -> None:
        with self.store.write() as conn:
            conn.execute(sa.delete(t.user_sessions).where(t.user_sessions.c.session_hash == digest(session)))
