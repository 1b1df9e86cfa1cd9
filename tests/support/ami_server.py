"""A small AMI server for tests and the bench: speaks the wire protocol on 127.0.0.1, port 0.

- Answers the client's own actions: Login (checks the secret; a refused login closes the
  session, as Asterisk does), Ping, Events, Filter (whitelist regexes applied to events),
  Originate (scripted OriginateResponse/DialEnd, modelled on captures steps 10-21),
  QueueSummary, QueueStatus, CoreShowChannels, Logoff.
- Replays the real captures: `replay_file` sends the *Event* packets of an `.ami.raw` transcript
  as recorded (split with its `.idx.tsv`); Asterisk's replies to the recording client's login are
  not replayed. `timestamps=True` adds `Timestamp: <recorded time>` after the Event line, as
  Asterisk does with `timestampevents=yes`.
- Misbehaves on demand: `stall` (answers nothing), `drop` (optionally mid-packet), `chunk`
  (every write split into small pieces with pauses), `send_raw` (garbage), `refuse`/`listen`.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BANNER = b"Asterisk Call Manager/11.0.0\r\n"


def read_packets(raw_path: Path) -> list[tuple[float, bytes]]:
    """(recorded time, packet bytes incl. the blank line) for every packet of a transcript."""
    data = raw_path.read_bytes()
    idx = raw_path.with_name(raw_path.name.removesuffix(".raw") + ".idx.tsv")
    out = []
    for line in idx.read_text().splitlines():
        ts, off, length, _first = line.split("\t", 3)
        out.append((float(ts), data[int(off):int(off) + int(length)]))
    return out


def event_packets(raw_path: Path, *, timestamps: bool = False) -> list[bytes]:
    """The Event packets of a transcript, as recorded (optionally with a Timestamp header)."""
    out = []
    for ts, pkt in read_packets(raw_path):
        if not pkt.startswith(b"Event:"):
            continue
        if timestamps:
            cut = pkt.index(b"\r\n") + 2
            pkt = pkt[:cut] + b"Timestamp: %.6f\r\n" % ts + pkt[cut:]
        out.append(pkt)
    return out


def parse_packet(raw: bytes) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        if ": " in line:
            k, v = line.split(": ", 1)
        elif ":" in line:
            k, v = line.split(":", 1)
        else:
            continue
        k = k.strip()
        if k.lower() == "variable":
            keys.setdefault("Variable", []).append(v)
        else:
            keys[k] = v
    return keys


def packet(*lines: tuple[str, Any]) -> bytes:
    return ("".join(f"{k}: {v}\r\n" for k, v in lines) + "\r\n").encode()


class Session:
    def __init__(self, server: AmiTestServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.lock = threading.Lock()
        self.logged_in = False
        self.username: str | None = None
        self.mask: set[str] | None = None  # None: all
        self.filters: list[re.Pattern[str]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        chunk = self.server.chunk
        with self.lock:
            if self.closed:
                return
            try:
                if chunk:
                    for i in range(0, len(data), chunk):
                        self.sock.sendall(data[i:i + chunk])
                        time.sleep(self.server.chunk_pause)
                else:
                    self.sock.sendall(data)
            except OSError:
                self.closed = True

    def wants(self, pkt: bytes) -> bool:
        if not self.logged_in:
            return False
        if self.mask is not None:
            m = re.search(rb"\r\nPrivilege: ([^\r]*)", pkt)
            if m is not None:
                classes = set(m.group(1).decode().split(","))
                if not (classes - {"all"}) & self.mask:
                    return False
        if self.filters:
            text = pkt.decode("utf-8", "replace")
            return any(f.search(text) for f in self.filters)
        return True

    def close(self) -> None:
        with self.lock:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()


def _mask(value: str) -> set[str] | None:
    v = value.strip().lower()
    if v in ("on", "all", "yes", "true"):
        return None
    if v in ("off", "no", "false", ""):
        return set()
    return {x.strip() for x in v.split(",")}


class AmiTestServer:
    def __init__(self, *, username: str = "callbackd", secret: str = "callbackd-secret",
                 banner: bytes = BANNER) -> None:
        self.username, self.secret, self.banner = username, secret, banner
        self.sessions: list[Session] = []
        self.actions: list[dict[str, Any]] = []
        self.originates: list[dict[str, Any]] = []
        self.logins: list[tuple[str, bool, float]] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self.stalled = False
        self.chunk: int | None = None
        self.chunk_pause = 0.002
        #: queue -> {"LoggedIn": n, "Available": n, "Callers": n}
        self.queues: dict[str, dict[str, int]] = {}
        #: number (as dialled) -> behaviour; default by last digit as in the capture dialplan
        self.behaviours: dict[str, str] = {}
        self.outcome_delay = 0.02
        self.live_channels: set[str] = set()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self.port = 0
        self._seq = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> AmiTestServer:
        self.listen()
        return self

    def __enter__(self) -> AmiTestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.port = s.getsockname()[1]
        self._listener = s
        t = threading.Thread(target=self._accept, args=(s,), daemon=True, name="ami-test-accept")
        t.start()
        self._threads.append(t)

    def refuse(self) -> None:
        """Stop listening: new connections are refused until `listen()`."""
        s, self._listener = self._listener, None
        if s is not None:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stop(self) -> None:
        self._stop.set()
        self.refuse()
        for sess in list(self.sessions):
            sess.close()
        for t in self._threads:
            t.join(2)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            sess = Session(self, conn)
            t = threading.Thread(target=self._serve, args=(sess,), daemon=True, name="ami-test-session")
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    # -- waiting (tests) --------------------------------------------------------------------
    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    def logged_in(self) -> list[Session]:
        return [s for s in self.sessions if s.logged_in and not s.closed]

    def wait_logged_in(self, n: int = 1, timeout: float = 5.0) -> bool:
        return self.wait_for(lambda: len(self.logged_in()) >= n, timeout)

    # -- serving ----------------------------------------------------------------------------
    def _serve(self, sess: Session) -> None:
        while self.stalled and not self._stop.is_set():
            time.sleep(0.01)
        self.sessions.append(sess)
        sess.write(self.banner)
        buf = b""
        try:
            while not self._stop.is_set() and not sess.closed:
                data = sess.sock.recv(65536)
                if not data:
                    break
                buf += data
                while b"\r\n\r\n" in buf:
                    raw, buf = buf.split(b"\r\n\r\n", 1)
                    if self.stalled:
                        continue
                    self._action(sess, parse_packet(raw))
        except OSError:
            pass
        except Exception as exc:  # noqa: BLE001 - a test server bug shows in `errors`
            self.errors.append(exc)
        finally:
            sess.close()
            self._notify()

    def _reply(self, sess: Session, aid: str | None, status: str, *extra: tuple[str, Any]) -> None:
        lines: list[tuple[str, Any]] = [("Response", status)]
        if aid is not None:
            lines.append(("ActionID", aid))
        sess.write(packet(*lines, *extra))

    def _action(self, sess: Session, keys: dict[str, Any]) -> None:
        name = str(keys.get("Action", "")).lower()
        aid = keys.get("ActionID")
        self.actions.append(keys)
        if name == "login":
            ok = keys.get("Username") == self.username and keys.get("Secret") == self.secret
            self.logins.append((str(keys.get("Username")), ok, time.monotonic()))
            if not ok:
                self._reply(sess, aid, "Error", ("Message", "Authentication failed"))
                sess.close()
                self._notify()
                return
            sess.username = keys["Username"]
            if "Events" in keys:
                sess.mask = _mask(keys["Events"])
            self._reply(sess, aid, "Success", ("Message", "Authentication accepted"))
            sess.write(packet(("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", 10),
                              ("LastReload", 10), ("Status", "Fully Booted")))
            sess.logged_in = True
        elif not sess.logged_in:
            self._reply(sess, aid, "Error", ("Message", "Permission denied"))
        elif name == "ping":
            self._reply(sess, aid, "Success", ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}"))
        elif name == "events":
            sess.mask = _mask(str(keys.get("EventMask", "on")))
            self._reply(sess, aid, "Success", ("Events", keys.get("EventMask", "on")))
        elif name == "filter":
            try:
                sess.filters.append(re.compile(str(keys.get("Filter", ""))))
            except re.error:
                self._reply(sess, aid, "Error", ("Message", "Filter Not Added"))
            else:
                self._reply(sess, aid, "Success", ("Message", "Filter Added Successfully"))
        elif name == "logoff":
            self._reply(sess, aid, "Goodbye", ("Message", "Thanks for all the fish."))
            sess.close()
        elif name == "queuesummary":
            self._reply(sess, aid, "Success", ("EventList", "start"), ("Message", "Queue summary will follow"))
            items = [q for q in self.queues if keys.get("Queue") in (None, "", q)]
            for q in items:
                v = self.queues[q]
                sess.write(packet(("Event", "QueueSummary"), ("Queue", q), ("LoggedIn", v.get("LoggedIn", 0)),
                                  ("Available", v.get("Available", 0)), ("Callers", v.get("Callers", 0)),
                                  ("HoldTime", 0), ("TalkTime", 0), ("LongestHoldTime", 0), ("ActionID", aid)))
            sess.write(packet(("Event", "QueueSummaryComplete"), ("ActionID", aid), ("EventList", "Complete"),
                              ("ListItems", len(items))))
        elif name == "queuestatus":
            self._reply(sess, aid, "Success", ("EventList", "start"), ("Message", "Queue status will follow"))
            for q, v in self.queues.items():
                sess.write(packet(("Event", "QueueParams"), ("Queue", q), ("Max", 0), ("Strategy", "ringall"),
                                  ("Calls", v.get("Callers", 0)), ("ActionID", aid)))
            sess.write(packet(("Event", "QueueStatusComplete"), ("ActionID", aid), ("EventList", "Complete"),
                              ("ListItems", len(self.queues))))
        elif name == "coreshowchannels":
            self._reply(sess, aid, "Success", ("EventList", "start"), ("Message", "Channels will follow"))
            for uid in sorted(self.live_channels):
                sess.write(packet(("Event", "CoreShowChannel"), ("Channel", f"Local/x-{uid}"), ("Uniqueid", uid),
                                  ("ActionID", aid)))
            sess.write(packet(("Event", "CoreShowChannelsComplete"), ("ActionID", aid), ("EventList", "Complete"),
                              ("ListItems", len(self.live_channels))))
        elif name == "originate":
            self.originates.append(keys)
            self._reply(sess, aid, "Success", ("Message", "Originate successfully queued"))
            t = threading.Thread(target=self._originate, args=(keys,), daemon=True)
            t.start()
        else:
            self._reply(sess, aid, "Error", ("Message", "Invalid/unknown command"))
        self._notify()

    # -- events -----------------------------------------------------------------------------
    def send_event(self, pkt: bytes) -> int:
        """Send one event packet to every logged-in session that wants it; how many got it."""
        n = 0
        for sess in self.logged_in():
            if sess.wants(pkt):
                sess.write(pkt)
                n += 1
        return n

    def send_events(self, pkts: Iterable[bytes]) -> int:
        sent = 0
        for p in pkts:
            sent += 1
            self.send_event(p)
        return sent

    def replay_file(self, raw_path: Path, *, timestamps: bool = False) -> int:
        return self.send_events(event_packets(raw_path, timestamps=timestamps))

    def send_raw(self, data: bytes) -> None:
        for sess in self.logged_in():
            sess.write(data)

    def drop(self, partial: bytes = b"") -> None:
        """Close every session, after sending `partial` (the first bytes of a packet)."""
        for sess in list(self.sessions):
            if partial and not sess.closed:
                sess.write(partial)
            sess.close()
        self._notify()

    # -- Originate (modelled on captures steps 10-21) --------------------------------------
    def behaviour(self, number: str) -> str:
        if number in self.behaviours:
            return self.behaviours[number]
        d = number[-1:] or "0"
        return {"5": "noanswer", "6": "noanswer", "7": "reject", "8": "busy", "9": "congestion"}.get(d, "answer")

    def _originate(self, keys: dict[str, Any]) -> None:
        time.sleep(self.outcome_delay)
        self._seq += 1
        aid = keys.get("ActionID", "")
        chan_req = str(keys.get("Channel", ""))
        chan_id = keys.get("ChannelId") or f"1795772600.{self._seq}"
        caller = str(keys.get("CallerID", "Hotline <1000>"))
        m = re.match(r"Local/(\+?\d+)@citizens", chan_req)
        if m:  # citizen-first (or plain): the OriginateResponse is the citizen's
            how = self.behaviour(m.group(1))
            status, response, reason = {
                "answer": ("ANSWER", "Success", 4), "noanswer": (None, "Failure", 3),
                "reject": ("NOANSWER", "Failure", 0), "busy": ("BUSY", "Failure", 5),
                "congestion": ("CONGESTION", "Failure", 8), "invalid": (None, "Failure", 0),
            }[how]
            if status:
                self.send_event(self._dialend(None, chan_id, chan_req, status))
            self.send_event(self._orig_response(aid, response, reason, chan_req, chan_id, keys, caller))
            return
        agent = re.match(r"\w+/(\d+)", chan_req)
        ext = agent.group(1) if agent else "200"
        if ext.startswith("3"):  # never answers: the Originate Timeout ends it (step 20)
            self.send_event(self._orig_response(aid, "Failure", 3, chan_req, chan_id, keys, caller))
            return
        if ext.startswith("4"):
            self.send_event(self._dialend(None, chan_id, chan_req, "BUSY"))
            self.send_event(self._orig_response(aid, "Failure", 5, chan_req, chan_id, keys, caller))
            return
        # the agent answers (steps 17-19); the citizen's outcome is the DialEnd of our channel
        self.live_channels.add(chan_id)
        self.send_event(self._dialend(None, chan_id, chan_req, "ANSWER"))
        self.send_event(self._orig_response(aid, "Success", 4, chan_req, chan_id, keys, caller))
        citizen = str(keys.get("Exten", ""))
        how = self.behaviour(citizen)
        status = {"answer": "ANSWER", "noanswer": "NOANSWER", "reject": "NOANSWER", "busy": "BUSY",
                  "congestion": "CONGESTION", "invalid": "CHANUNAVAIL"}[how]
        time.sleep(self.outcome_delay)
        self.send_event(self._dialend(chan_id, f"{citizen}-x", f"Local/{citizen}@citizens", status))
        self.live_channels.discard(chan_id)

    @staticmethod
    def _orig_response(aid: str, response: str, reason: int, chan: str, chan_id: str, keys: dict[str, Any],
                       caller: str) -> bytes:
        target = ([("Context", keys.get("Context", "")), ("Exten", keys.get("Exten", ""))] if keys.get("Context")
                  else [("Application", keys.get("Application", "")), ("Data", keys.get("Data", ""))])
        name, _, num = caller.partition("<")
        return packet(("Event", "OriginateResponse"), ("Privilege", "call,all"), ("ActionID", aid),
                      ("Response", response), ("Channel", chan), *target, ("Reason", reason),
                      ("Uniqueid", chan_id), ("CallerIDNum", num.rstrip(">") or "<unknown>"),
                      ("CallerIDName", name.strip().strip('"') or "<unknown>"))

    @staticmethod
    def _dialend(src_uid: str | None, dest_uid: str, dest_chan: str, status: str) -> bytes:
        lines: list[tuple[str, Any]] = [("Event", "DialEnd"), ("Privilege", "call,all")]
        if src_uid is not None:
            lines += [("Channel", f"Local/200@agents-{src_uid};1"), ("ChannelState", 6), ("ChannelStateDesc", "Up"),
                      ("CallerIDNum", "1000"), ("CallerIDName", "Hotline"), ("Context", "callback_to_citizen"),
                      ("Uniqueid", src_uid), ("Linkedid", src_uid)]
        lines += [("DestChannel", f"{dest_chan}-0000001e;1"), ("DestChannelState", 0), ("DestChannelStateDesc", "Down"),
                  ("DestCallerIDNum", "1000"), ("DestCallerIDName", "Hotline"), ("DestUniqueid", dest_uid),
                  ("DestLinkedid", src_uid or dest_uid), ("DialStatus", status)]
        return packet(*lines)
