"""The daemon's AMI links: one per PBX name, shared by that PBX's source and the AMI dialer.

Ownership, so that a reload can add, change and remove PBXs without a restart:

- `AmiLinks` (one per daemon, `links_of(daemon)`) creates a PBX's link from its
  `[[sources.ami]]` settings and, on reload, hands changed connection settings (host, port,
  username, secret, timeouts, backoff, filter) to the live link (`AmiLink.reconfigure`): the
  link logs off and reconnects with them, its subscribers stay.
- Consumers (an `AmiSource`, the `AmiDialer`) subscribe their sinks and `acquire` the link when
  they start, `unsubscribe` and `release` it when they stop. The link counts them: it connects
  with the first and logs off after the last.
- `prune()` forgets links nobody holds any more (a PBX removed by a reload), so a PBX added
  again later under the same name gets a fresh link.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .client import AmiLink
from .events import EVENT_MASK, filter_regexes
from .settings import AmiSourceSettings


def link_args(s: AmiSourceSettings) -> dict[str, Any]:
    """What the connection of one PBX is made of (a change to any of it means a reconnect)."""
    return {"host": s.host, "port": s.port, "username": s.username,
            "secret": s.secret.get_secret_value() if s.secret is not None else "",
            "socket_timeout": s.socket_timeout, "ping_interval": s.effective_ping_interval,
            "backoff_initial": s.backoff_initial, "backoff_max": s.backoff_max,
            "events": EVENT_MASK if s.filter else "on", "filters": filter_regexes() if s.filter else []}


def make_link(s: AmiSourceSettings, *, clock: Callable[[], float] = time.time) -> AmiLink:
    return AmiLink(s.name, clock=clock, **link_args(s))


class AmiLinks:
    """The links of one daemon, keyed by PBX name."""

    def __init__(self, settings: Iterable[AmiSourceSettings], *,
                 factory: Callable[[AmiSourceSettings], AmiLink] = make_link) -> None:
        self._settings = {s.name: s for s in settings}
        self._configured = set(self._settings)
        self._links: dict[str, AmiLink] = {}
        self._factory = factory
        self._lock = threading.Lock()
        #: the AmiDialer when `[dialer] kind = "ami"` (it registers itself; the AMI component reloads it)
        self.dialer: Any = None

    def link(self, name: str) -> AmiLink:
        """The one link to PBX `name` (created from its settings on first use)."""
        with self._lock:
            link = self._links.get(name)
            if link is None:
                if name not in self._settings:
                    raise KeyError(f"no [[sources.ami]] is named {name!r}")
                link = self._links[name] = self._factory(self._settings[name])
            return link

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._links)

    def update(self, settings: Iterable[AmiSourceSettings]) -> list[str]:
        """New `[[sources.ami]]` settings (reload). Links whose connection changed are reconfigured
        (they log off and reconnect); links whose PBX is gone are left to their holders' `release`
        and `prune`. Returns the names of the links reconfigured."""
        new = {s.name: s for s in settings}
        changed = []
        with self._lock:
            for name, link in self._links.items():
                before, after = self._settings.get(name), new.get(name)
                if before is None or after is None or link_args(before) == link_args(after):
                    continue
                link.reconfigure(**link_args(after))
                changed.append(name)
            kept = {n: s for n, s in self._settings.items() if n in self._links and n not in new}
            self._settings = {**kept, **new}  # a link still held keeps the settings it runs with
            self._configured = set(new)
        return changed

    def prune(self) -> list[str]:
        """Forget the links nobody holds (they have logged off); returns their names."""
        with self._lock:
            gone = [n for n, link in self._links.items() if link.users == 0]
            for n in gone:
                del self._links[n]
                if n not in self._configured:
                    del self._settings[n]
        return gone


_REGISTRIES: weakref.WeakKeyDictionary[Any, AmiLinks] = weakref.WeakKeyDictionary()


def links_of(daemon: Any) -> AmiLinks:
    """This daemon's registry (made from its settings on first use)."""
    reg = _REGISTRIES.get(daemon)
    if reg is None:
        reg = _REGISTRIES[daemon] = AmiLinks(daemon.settings.sources.ami)
    return reg
