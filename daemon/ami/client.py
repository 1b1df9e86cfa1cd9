"""One PBX's AMI link, kept up: asterisk-ami underneath, its gaps closed here.

The design card names `asterisk-ami` (asterisk.ami.AMIClient) and we keep it for what it does
well: the socket, `Action` rendering, `Response`/`Event` parsing, ActionID futures and listener
plumbing. Its gaps, read from its source (asterisk/ami/client.py, response.py) and closed here:

1. An idle link dies. The socket has a 3-second timeout (`timeout=3`); a quiet PBX makes `recv`
   raise, the reader thread ends and nothing reconnects. -> `AmiLink` pings whenever the link
   was quiet for `ping_interval` (kept below a third of the socket timeout), so the Pong keeps
   bytes flowing; a Ping that gets no answer counts as a dead link.
2. No backoff. `AutoReconnect` retries every 0.5 s forever, and logs nothing. -> a supervisor
   thread reconnects with capped exponential backoff and jitter (first retry within
   `backoff_initial` <= 1 s); a refused login is one clear error per backoff step.
3. An exception in a listener (or a malformed packet, or an unexpected banner) propagates out of
   `listen()` and kills its reader thread silently. -> `_Client.fire_recv_pack` guards each
   packet; `_Client.listen` can no longer die with an exception (it marks the link finished).
4. Bytes: the reader decodes with `errors='replace'`, so non-UTF-8 bytes vanish silently, and a
   connection closed mid-packet drops the partial packet without a word. -> `_Client._next_pack`
   frames bytes itself (a packet split across reads is joined; reads are 64 KiB, not 1 KiB),
   decodes strictly, and reports odd packets and cut-off tails to `on_bad` (dead letters); only
   a caller-ID *name* may carry odd bytes and still be used, as in the queue_log source.
5. `FutureResponse` calls `Condition.notifyAll()` (deprecated since Python 3.10: under
   `-W error` the DeprecationWarning is raised in the reader thread and kills it), `send` uses
   `socket.send` (may write part of an action) from several threads without a lock, and
   `disconnect` closes the socket without shutting it down, so a blocked reader lingers. ->
   `_Future`, a locked `sendall`, and `shutdown` before `close`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from asterisk.ami import Action, AMIClient
from asterisk.ami.response import FutureResponse

from ..logs import get_logger

EventSink = Callable[[str, dict[str, str], float], None]
BadSink = Callable[[bytes, str], None]
_NAME_KEYS = ("calleridname:", "connectedlinename:", "destcalleridname:", "destconnectedlinename:",
              "membername:", "callerid:")


class AmiError(Exception):
    """The AMI link is down, or the PBX refused or did not answer an action."""


class LoginRefused(AmiError):
    """The PBX refused the login (username or secret)."""


class AmiNoReply(AmiError):
    """The action was sent but no Response came (timeout, or the link closed while waiting):
    the PBX may well have carried it out."""


class _Future(FutureResponse):
    """asterisk-ami's FutureResponse without the deprecated notifyAll()."""

    def set_response(self, response: Any) -> None:
        with self._lock:
            self._response = response
            self._lock.notify_all()
        if self._callback is not None:
            self._callback(response)

    def get_response(self) -> Any:
        with self._lock:
            if self._response is None:
                self._lock.wait(self._timeout)
            return self._response

    response = property(get_response, set_response)


class _Client(AMIClient):  # type: ignore[misc]
    """AMIClient with the reader made sturdy (see the module docstring, items 3-5)."""

    RECV = 1 << 16

    def __init__(self, *args: Any, on_bad: BadSink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_lock = threading.Lock()
        self._on_bad = on_bad
        self.error: BaseException | None = None
        self.last_recv = time.monotonic()
        self.banner: str | None = None

    # -- sending ----------------------------------------------------------------------------
    def send_action(self, action: Any, callback: Any = None) -> _Future:
        action_id = action.keys.setdefault("ActionID", self.next_action_id())
        future = _Future(callback, self._timeout)
        self._futures[action_id] = future
        self._fire_on_action(action=action)
        self.send(action)
        return future

    def send(self, pack: Any) -> None:
        data = (str(pack) + "\r\n").encode(self.encoding)
        with self._send_lock:
            self._socket.sendall(data)

    def disconnect(self) -> None:
        if self.finished is not None:
            self.finished.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self._timeout)

    # -- reading ----------------------------------------------------------------------------
    def _next_pack(self) -> Any:
        sock, finished = self._socket, self.finished
        buf = b""
        banner_done = False
        while not finished.is_set():
            try:
                chunk = sock.recv(self.RECV)
            except OSError as exc:
                if finished.is_set():
                    return
                raise exc
            if not chunk:
                if buf.strip():
                    self._on_bad(buf, f"connection closed mid-packet ({len(buf)} bytes of an unfinished packet)")
                finished.set()
                return
            self.last_recv = time.monotonic()
            buf += chunk
            if not banner_done:
                cut = buf.find(b"\r\n")
                if cut < 0:
                    continue
                line, buf = buf[:cut], buf[cut + 2:]
                banner_done = True
                yield line.decode("utf-8", "replace")
            start = 0
            while True:
                end = buf.find(b"\r\n\r\n", start)
                if end < 0:
                    break
                raw = buf[start:end]
                start = end + 4
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    text = self._odd_bytes(raw, exc)
                    if text is None:
                        continue
                yield text
            if start:
                buf = buf[start:]

    def _odd_bytes(self, raw: bytes, exc: UnicodeDecodeError) -> str | None:
        """Keep a packet whose only odd bytes are in caller-ID names; dead-letter the rest."""
        lines = raw.split(b"\r\n")
        out = []
        for line in lines:
            try:
                out.append(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                if not line.lower().startswith(tuple(k.encode() for k in _NAME_KEYS)):
                    if b": " not in line:
                        why = f"not an AMI packet: invalid UTF-8 (byte {e.start}) in a line that is no 'Key: Value'"
                    else:
                        key = line.split(b":", 1)[0].decode("ascii", "replace")[:40]
                        why = f"invalid UTF-8 in {key!r} (byte {e.start} of that line)"
                    self._on_bad(raw + b"\r\n\r\n", why)
                    return None
                out.append(line.decode("utf-8", "replace"))
        return "\r\n".join(out)

    def listen(self) -> None:
        """The library's reader loop, which can no longer die with an exception."""
        try:
            packs = self._next_pack()
            banner = next(packs, None)
            if banner is None or not AMIClient.asterisk_start_regex.match(banner):
                if banner is not None:
                    self._on_bad(banner.encode(), "not an AMI banner (expected 'Asterisk Call Manager/<version>')")
                raise AmiError(f"no AMI banner from {self._address}:{self._port}")
            self.banner = banner
            self._ami_version = AMIClient.asterisk_start_regex.match(banner).group("version")
            self._fire_on_connect()
            for pack in packs:
                self.fire_recv_pack(pack)
        except BaseException as exc:  # noqa: BLE001 - the reader must end cleanly, whatever happened
            if not self.finished.is_set():
                self.error = exc
        finally:
            self.finished.set()
            with contextlib.suppress(Exception):  # a listener's failure cannot matter now
                self._fire_on_disconnect(error=self.error)

    def fire_recv_pack(self, pack: str) -> None:
        try:
            head = pack[:9].lower()
            if head.startswith("event:") or head.startswith("response:"):
                super().fire_recv_pack(pack)
                return
            self._on_bad(pack.encode("utf-8", "replace") + b"\r\n\r\n",
                         "not an AMI packet (no 'Event:' or 'Response:' first line)")
        except Exception as exc:  # noqa: BLE001 - a bad packet or a failing listener must not kill the reader
            self._on_bad(pack.encode("utf-8", "replace") + b"\r\n\r\n",
                         f"packet could not be handled: {type(exc).__name__}: {exc}")


class AmiLink:
    """A supervised AMI connection: login, keep-alive, reconnect with backoff, action helpers.

    Consumers subscribe to event names (lower case) with `subscribe`; sinks run in the reader
    thread and must be quick (append to a list). Several consumers (the source, the dialer)
    share one link; `acquire`/`release` start it on first use and stop it after the last (Logoff,
    then close). A consumer that goes away takes its sinks with it (`unsubscribe`); new connection
    settings (`reconfigure`, on reload) replace the connection but keep the subscribers.
    """

    def __init__(self, name: str, host: str, port: int, username: str, secret: str, *,
                 socket_timeout: float = 3.0, ping_interval: float = 1.0, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, events: str = "on", filters: list[str] | None = None,
                 on_bad: BadSink | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.host, self.port = host, port
        self._username, self._secret = username, secret
        self.socket_timeout = socket_timeout
        self.ping_interval = min(ping_interval, socket_timeout / 3)
        self.backoff_initial = backoff_initial
        self.backoff_max = max(backoff_max, backoff_initial)
        self.events = events
        self.filters = list(filters or [])
        self.on_bad = on_bad or (lambda raw, why: None)
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = get_logger("callbackd.ami").bind(pbx=name)
        self._subs: dict[str, list[EventSink]] = {}
        self._all: list[EventSink] = []
        self._state_sinks: list[Callable[[bool], None]] = []
        self._bad_sinks: list[BadSink] = []
        self._lists: dict[str, list[dict[str, str]]] = {}
        self._list_done: dict[str, threading.Event] = {}
        self._client: _Client | None = None
        self._up = threading.Event()
        self._stop = threading.Event()
        self._kick = threading.Event()   # cuts a backoff wait short (stop, new settings)
        self._renew = threading.Event()  # new settings: replace the connection
        self._thread: threading.Thread | None = None
        self._users = 0
        self._lock = threading.Lock()
        self._seq = 0
        self.connects = 0
        self.login_failures = 0
        self.last_error: str | None = None
        #: when each connection attempt started (monotonic), for the tests and `status`
        self.attempt_times: list[float] = []

    # -- consumers --------------------------------------------------------------------------
    def subscribe(self, names: frozenset[str] | set[str] | None, sink: EventSink) -> None:
        """Call sink(name, keys, read_at) for these event names (lower case); None: every event."""
        if names is None:
            self._all.append(sink)
        else:
            for n in names:
                self._subs.setdefault(n, []).append(sink)

    def on_state(self, sink: Callable[[bool], None]) -> None:
        self._state_sinks.append(sink)

    def unsubscribe(self, sink: Callable[..., None]) -> None:
        """Remove every registration of `sink` (events, state, dead letters); unknown sinks are ignored."""
        for name, sinks in list(self._subs.items()):
            kept = [x for x in sinks if x != sink]
            if kept:
                self._subs[name] = kept
            else:
                del self._subs[name]
        self._all = [x for x in self._all if x != sink]
        self._state_sinks = [x for x in self._state_sinks if x != sink]
        self._bad_sinks = [x for x in self._bad_sinks if x != sink]

    def on_bad_packet(self, sink: BadSink) -> None:
        """Also call sink(raw, why) for packets that cannot be used (after `on_bad`)."""
        self._bad_sinks.append(sink)

    @property
    def users(self) -> int:
        return self._users

    def reconfigure(self, host: str, port: int, username: str, secret: str, *, socket_timeout: float,
                    ping_interval: float, backoff_initial: float, backoff_max: float, events: str,
                    filters: list[str]) -> None:
        """New connection settings (reload): a live connection is logged off and replaced at once, a
        backoff wait is cut short; subscribers stay, and the next connection uses the new values."""
        with self._lock:
            self.host, self.port = host, port
            self._username, self._secret = username, secret
            self.socket_timeout = socket_timeout
            self.ping_interval = min(ping_interval, socket_timeout / 3)
            self.backoff_initial = backoff_initial
            self.backoff_max = max(backoff_max, backoff_initial)
            self.events = events
            self.filters = list(filters)
            self._renew.set()
            self._kick.set()
        client = self._client
        if client is not None and client.finished is not None and not client.finished.is_set():
            self._logoff(client)

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    # -- lifecycle --------------------------------------------------------------------------
    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self.start()

    def release(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                self.stop()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._kick.clear()
        self._thread = threading.Thread(target=self._supervise, name=f"ami-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        client = self._client
        if client is not None and client.finished is not None and not client.finished.is_set():
            self._logoff(client)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @staticmethod
    def _logoff(client: _Client) -> None:
        with contextlib.suppress(OSError):
            client.send(Action("Logoff", {"ActionID": "callbackd-logoff"}))
        client.disconnect()

    def _pause(self, delay: float) -> None:
        """Wait before the next attempt; stop() and new settings cut the wait short."""
        self._kick.wait(delay)
        self._kick.clear()

    def backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter: failure n waits in [d/2, d], d = min(cap, initial*2^n)."""
        d = min(self.backoff_max, self.backoff_initial * (2 ** min(failures, 30)))
        return d / 2 + self.rng.random() * d / 2

    def _supervise(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self._renew.is_set():  # new settings: a fresh start, first retry at once
                self._kick.clear()
                self._renew.clear()
                failures = 0
            self.attempt_times.append(time.monotonic())
            try:
                client = self._connect()
            except LoginRefused as exc:
                if self._renew.is_set():
                    continue
                self.login_failures += 1
                delay = self.backoff(failures)
                failures += 1
                self.last_error = str(exc)
                self.log.error("ami.login_refused", host=self.host, port=self.port, username=self._username,
                               error=str(exc), retry_in=round(delay, 2), attempt=failures)
                self._pause(delay)
                continue
            except (OSError, AmiError) as exc:
                if self._renew.is_set() or self._stop.is_set():
                    continue
                delay = self.backoff(failures)
                failures += 1
                msg = f"{type(exc).__name__}: {exc}"
                # first failure and every change at WARNING; a long outage does not flood the log (a detail
                # in parentheses, "(timed out)" or "(Connection reset by peer)", is no change of its own)
                if (msg.split(" (", 1)[0] != (self.last_error or "").split(" (", 1)[0]
                        or failures in (1, 10, 100) or failures % 1000 == 0):
                    self.log.warning("ami.connect_failed", host=self.host, port=self.port, error=msg,
                                     retry_in=round(delay, 2), attempt=failures)
                self.last_error = msg
                self._pause(delay)
                continue
            failures = 0
            self.last_error = None
            self.connects += 1
            self._set_up(True)
            self.log.info("ami.connected", host=self.host, port=self.port, banner=client.banner,
                          connection=self.connects)
            self._keepalive(client)
            self._set_up(False)
            if self._renew.is_set() and not client.finished.is_set():
                self._logoff(client)  # new settings came while this connection was being made
            client.disconnect()
            if self._renew.is_set() and not self._stop.is_set():
                self.log.info("ami.reconnecting", reason="new settings", host=self.host, port=self.port)
            elif not self._stop.is_set():
                err = client.error
                # one line per drop; a silent peer (the reader's socket timeout, or the Ping's) is named as such
                silent = isinstance(err, TimeoutError) or (isinstance(err, AmiNoReply) and "Ping" in str(err))
                self.log.warning("ami.disconnected", error=(
                    f"keep-alive Ping unanswered: nothing from the PBX for {self.socket_timeout:g} s" if silent
                    else f"{type(err).__name__}: {err}" if err else "closed by peer"))
                # the first retry comes at once (a dropped link is not a refused one); backoff after that
        self._client = None

    def _set_up(self, up: bool) -> None:
        if up:
            self._up.set()
        else:
            self._up.clear()
        for sink in self._state_sinks:
            try:
                sink(up)
            except Exception as exc:  # noqa: BLE001 - a consumer must not stop the supervisor
                self.log.error("ami.state_sink_failed", error=str(exc))

    def _connect(self) -> _Client:
        client = _Client(self.host, self.port, timeout=self.socket_timeout, on_bad=self._bad)
        client.add_listener(on_event=self._on_event, on_unknown=self._on_unknown)
        try:
            client.connect()
        except OSError:
            client._socket.close()
            raise
        self._client = client
        try:
            login = Action("Login", {"Username": self._username, "Secret": self._secret, "Events": self.events})
            resp = self._wait(client, login, self.socket_timeout)
            if resp.status.lower() != "success":
                raise LoginRefused(resp.keys.get("Message") or resp.status)
            for regex in self.filters:
                r = self._wait(client, Action("Filter", {"Operation": "Add", "Filter": regex}), self.socket_timeout)
                if r.status.lower() != "success":
                    self.log.warning("ami.filter_refused", filter=regex, message=r.keys.get("Message"))
                    break
        except BaseException:
            client.disconnect()
            raise
        return client

    def _wait(self, client: _Client, action: Any, timeout: float) -> Any:
        fut = client.send_action(action)
        deadline = time.monotonic() + timeout
        while True:
            resp = fut._response
            if resp is not None:
                return resp
            if client.finished.is_set():
                err = client.error
                raise AmiNoReply(f"link closed during {action.name}" + (f" ({err})" if err else ""))
            if time.monotonic() >= deadline:
                client._futures.pop(action.keys.get("ActionID"), None)  # a late Response is dropped
                raise AmiNoReply(f"no answer to {action.name} within {timeout:g}s")
            with fut._lock:
                fut._lock.wait(0.05)

    def _keepalive(self, client: _Client) -> None:
        """Ping a quiet link; return when it is gone (or on stop)."""
        finished = client.finished
        while not self._stop.is_set() and not finished.is_set() and not self._renew.is_set():
            quiet = time.monotonic() - client.last_recv
            if quiet < self.ping_interval:
                finished.wait(self.ping_interval - quiet)
                continue
            try:
                self._wait(client, Action("Ping", {"ActionID": self._next_id("ping")}), self.socket_timeout)
            except (OSError, AmiError) as exc:
                if not finished.is_set():
                    client.error = exc  # logged once, as the reason of ami.disconnected
                return

    # -- actions ----------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._seq += 1
            return f"callbackd-{prefix}-{self._seq}"

    def action(self, name: str, keys: dict[str, Any], variables: dict[str, str] | None = None,
               timeout: float | None = None) -> dict[str, str]:
        """Send an action, wait for its Response; keys of the answer lower-cased. Raises AmiError."""
        client = self._client
        if client is None or not self._up.is_set():
            raise AmiError(f"AMI link to {self.name} is down")
        act = Action(name, dict(keys), dict(variables or {}))
        act.keys.setdefault("ActionID", self._next_id(name.lower()))
        try:
            resp = self._wait(client, act, timeout or self.socket_timeout)
        except OSError as exc:
            raise AmiError(f"{name}: {exc}") from exc
        out = {k.lower(): v for k, v in resp.keys.items()}
        out["response"] = resp.status
        if resp.status.lower() == "error":
            raise AmiError(f"{name} refused: {out.get('message', 'error')}")
        return out

    def list_action(self, name: str, keys: dict[str, Any], timeout: float | None = None) -> list[dict[str, str]]:
        """An action answered by a list of events (QueueSummary, CoreShowChannels): the events."""
        aid = self._next_id(name.lower())
        done = threading.Event()
        self._lists[aid] = []
        self._list_done[aid] = done
        try:
            self.action(name, {**keys, "ActionID": aid}, timeout=timeout)
            if not done.wait(timeout or self.socket_timeout):
                raise AmiError(f"{name}: the list did not complete")
            return self._lists[aid]
        finally:
            self._lists.pop(aid, None)
            self._list_done.pop(aid, None)

    # -- reader-thread callbacks ------------------------------------------------------------
    def _bad(self, raw: bytes, why: str) -> None:
        for sink in (self.on_bad, *self._bad_sinks):
            try:
                sink(raw, why)
            except Exception as exc:  # noqa: BLE001
                self.log.error("ami.dead_letter_failed", error=str(exc))

    def _on_unknown(self, source: Any, pack: str) -> None:
        self._bad(pack.encode("utf-8", "replace") + b"\r\n\r\n", "unrecognised AMI packet (no 'Key: Value' first line)")

    def _on_event(self, source: Any, event: Any) -> None:
        name = event.name.lower()
        keys = event.keys
        read_at = self.clock()
        if self._lists:
            aid = keys.get("ActionID") or keys.get("actionid")
            if aid in self._lists:
                low = {k.lower(): v for k, v in keys.items()}
                if name.endswith("complete") or (low.get("eventlist") or "").lower() == "complete":
                    self._list_done[aid].set()
                else:
                    self._lists[aid].append({"event": event.name, **low})
                return
        sinks = self._subs.get(name)
        if sinks is None and not self._all:
            return
        low = {k.lower(): v for k, v in keys.items()}
        for sink in (sinks or ()):
            sink(name, low, read_at)
        for sink in self._all:
            sink(name, low, read_at)
