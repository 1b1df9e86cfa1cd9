"""SIGHUP applies `[[sources.ami]]` changes to the running daemon: a PBX added is connected and its
events ingested, a PBX removed is logged off and closed, a PBX whose secret changed reconnects with
it, the others keep their link. A bad new configuration is refused as a whole."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from support.ami_env import CAPTURES
from support.ami_server import AmiTestServer
from test_daemon import CALLBACKD, cli, wait_for

STEPS = CAPTURES / "steps"
SECRET = "callbackd-secret"
FAST = ("flush_interval = 0.05\nsocket_timeout = 1.0\nping_interval = 0.3\nbackoff_initial = 0.2\n"
        "backoff_max = 1.6\n")


def pbx(name: str, port: int, secret: str = SECRET, extra: str = "") -> str:
    return (f'\n[[sources.ami]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\nusername = "callbackd"\n'
            f'secret = "{secret}"\n{FAST}{extra}')


def write(cfg: Path, store_url: str, *pbxs: str, tail: str = "") -> None:
    cfg.write_text(f"""
[daemon]
state_dir = "{cfg.parent / 'state'}"
timezone = "UTC"
log_format = "json"

[store]
url = "{store_url}"

[http]
enabled = false

[detect]
threshold = 3
lookback = "24h"
min_wait_seconds = 5
default_region = "US"
internal_max_digits = 5
""" + "".join(pbxs) + tail)


def count(store_url: str, system: str) -> int:
    eng = sa.create_engine(store_url)
    try:
        with eng.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM attempts WHERE system = :s AND origin = 'ami'"),
                                 {"s": system}).scalar() or 0)
    finally:
        eng.dispose()


def logs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def events(path: Path, name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in logs(path) if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]


def logoffs(server: AmiTestServer) -> int:
    return sum(1 for a in server.actions if str(a.get("Action", "")).lower() == "logoff")


class Daemon:
    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.log = cfg.parent / "daemon.log"
        self._err = self.log.open("w")
        self.p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], stdout=subprocess.DEVNULL,
                                  stderr=self._err, text=True)

    def reload(self) -> int:
        """SIGHUP; returns once the daemon has dealt with it (reloaded or refused)."""
        before = len(events(self.log, "daemon.reloaded")) + len(events(self.log, "daemon.reload_failed"))
        self.p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(events(self.log, "daemon.reloaded"))
                        + len(events(self.log, "daemon.reload_failed")) > before, 15), "SIGHUP not handled"
        assert self.p.poll() is None, "the daemon exited on reload"
        return before

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(30)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait(10)
            self._err.close()


def test_sighup_adds_removes_and_reconnects_pbxs(tmp_path: Path, store_url: str) -> None:
    cfg = tmp_path / "callbackd.toml"
    with AmiTestServer() as a, AmiTestServer() as b:
        write(cfg, store_url, pbx("a", a.port))
        d = Daemon(cfg)
        try:
            # PBX A only: connected, its events become attempts; B is not contacted
            assert a.wait_logged_in(1, 30), "never logged in to A"
            a.replay_file(STEPS / "02_inbound_abandon.ami.raw", timestamps=True)
            assert wait_for(lambda: count(store_url, "a") == 1, 15)
            assert b.connections == 0

            # SIGHUP adding B: B connected, its replayed capture ingested; A keeps its link
            write(cfg, store_url, pbx("a", a.port), pbx("b", b.port))
            d.reload()
            assert b.wait_logged_in(1, 15), "B added by SIGHUP was never logged in to"
            b.replay_file(STEPS / "22_mixed_story.ami.raw", timestamps=True)
            assert wait_for(lambda: count(store_url, "b") == 9, 15), count(store_url, "b")
            a.replay_file(STEPS / "01_inbound_timeout.ami.raw", timestamps=True)
            assert wait_for(lambda: count(store_url, "a") == 2, 15), "A lost events across the reload"
            assert a.connections == 1 and logoffs(a) == 0  # no reconnect of the unchanged PBX

            # a bad new config (a third PBX, on A's port, and B twice) is refused as a whole
            write(cfg, store_url, pbx("a", a.port), pbx("b", b.port), pbx("c", a.port), pbx("b", b.port))
            d.reload()
            refused = events(d.log, "daemon.reload_failed")
            assert len(refused) == 1 and "sources.ami.name" in refused[0]["error"] \
                and "b repeated" in refused[0]["error"], refused
            # a [dialer.ami] naming no configured PBX: refused too, naming the field
            write(cfg, store_url, pbx("a", a.port), pbx("b", b.port),
                  tail='\n[dialer]\nkind = "ami"\n[dialer.ami]\npbx = "zzz"\nmode = "agent-first"\n'
                       'agent_channel = "Local/200@agents"\ncontext = "callback_to_citizen"\n')
            d.reload()
            refused = events(d.log, "daemon.reload_failed")
            assert len(refused) == 2 and "dialer.ami.pbx" in refused[1]["error"] \
                and "'zzz'" in refused[1]["error"], refused
            assert a.connections == 1 and b.connections == 1  # nothing of them was applied
            assert len(a.logged_in()) == 1 and len(b.logged_in()) == 1

            # SIGHUP removing A: A is logged off and closed, B untouched
            write(cfg, store_url, pbx("b", b.port))
            d.reload()
            assert a.wait_for(lambda: logoffs(a) == 1 and not a.logged_in(), 10), "A was not logged off"
            a.replay_file(STEPS / "03_inbound_abandon_ctx.ami.raw", timestamps=True)
            b.replay_file(STEPS / "02_inbound_abandon.ami.raw", timestamps=True)
            assert wait_for(lambda: count(store_url, "b") == 10, 15)  # B still ingests (so A's flush ran too)
            assert count(store_url, "a") == 2  # nothing of A after its removal
            assert a.connections == 1 and b.connections == 1  # A never reconnected, B never dropped

            # B's secret changed to a wrong one: one clear error per try, retried with backoff
            write(cfg, store_url, pbx("b", b.port, secret="not-the-secret"))
            d.reload()
            assert b.wait_for(lambda: sum(1 for _, ok, _ in b.logins if not ok) >= 3, 15), b.logins
            assert logoffs(b) == 1  # the old session was logged off, not just cut

            # fixed: B reconnects with the right secret at once and ingests again
            write(cfg, store_url, pbx("b", b.port))
            d.reload()
            assert b.wait_logged_in(1, 10), "B did not reconnect once its secret was fixed"
            b.replay_file(STEPS / "03_inbound_abandon_ctx.ami.raw", timestamps=True)
            assert wait_for(lambda: count(store_url, "b") > 10, 15)
        finally:
            code = d.stop()
    assert code == 0, d.log.read_text()[-3000:]
    out = logs(d.log)
    assert len([e for e in out if e["event"] == "daemon.reloaded"]) == 4

    # the wrong secret: clear errors naming the PBX and the cause, spaced by a growing backoff
    refused = [e for e in out if e["event"] == "ami.login_refused"]
    assert refused and all(e["pbx"] == "b" and e["error"] == "Authentication failed" for e in refused)
    assert [e["attempt"] for e in refused] == list(range(1, len(refused) + 1))
    assert refused[2]["retry_in"] > refused[0]["retry_in"]  # 0.2 s doubling: [0.4, 0.8] > [0.1, 0.2]
    tries = [t for _, ok, t in b.logins if not ok]
    assert all(t2 - t1 >= e["retry_in"] - 0.01 for t1, t2, e in zip(tries, tries[1:], refused))
    errors = [e for e in out if e.get("level", e.get("log_level")) == "error"]
    assert {e["event"] for e in errors} == {"ami.login_refused", "daemon.reload_failed"}, errors
    assert "not-the-secret" not in d.log.read_text() and SECRET not in d.log.read_text()

    summary = [e for e in out if e["event"] == "ami.reloaded"]
    assert [(e["added"], e["removed"], e["reconnected"]) for e in summary] == [
        (["b"], [], []), ([], ["a"], []), ([], [], ["b"]), ([], [], ["b"])]
    assert [e["pbx"] for e in out if e["event"] == "ami.pbx_removed"] == ["a"]


def test_sighup_adds_the_first_pbx(tmp_path: Path, store_url: str) -> None:
    """A daemon started without any PBX gets one by SIGHUP; one without a secret is refused first."""
    cfg = tmp_path / "callbackd.toml"
    with AmiTestServer() as a:
        write(cfg, store_url)
        d = Daemon(cfg)
        try:
            assert wait_for(lambda: events(d.log, "daemon.started"), 30)
            write(cfg, store_url, pbx("a", a.port).replace(f'secret = "{SECRET}"\n', ""))
            d.reload()
            refused = events(d.log, "daemon.reload_failed")
            assert len(refused) == 1 and "sources.ami.0" in refused[0]["error"] \
                and "secret or secret_file is required" in refused[0]["error"], refused
            write(cfg, store_url, pbx("a", a.port))
            assert "sent SIGHUP" in cli(cfg, "reload").stdout
            assert a.wait_logged_in(1, 15), "the PBX added by reload was never logged in to"
            assert a.connections == 1
            a.replay_file(STEPS / "22_mixed_story.ami.raw", timestamps=True)
            assert wait_for(lambda: count(store_url, "a") == 9, 15), count(store_url, "a")
        finally:
            code = d.stop()
    assert code == 0, d.log.read_text()[-3000:]
    assert [e["added"] for e in logs(d.log) if e["event"] == "ami.reloaded"] == [["a"]]


DIALER = """
[dialer]
kind = "ami"
lease = "3s"
tick = "0.2s"
drain_timeout = "1s"

[dialer.ami]
pbx = "{pbx}"
mode = "citizen-first"
citizen_channel = "Local/{{number}}@citizens"
agent_exten = "200"
context = "callback_to_agent"
max_concurrent = 1
settle_seconds = 0.1
"""


def seed(store_url: str, number: str) -> None:
    """Three abandons in a row: one callback, due now (no [schedule]: nothing to plan)."""
    from datetime import UTC, datetime

    from callback_queue.attempts import Attempt, Origin, Outcome
    from callback_queue.clock import FakeClock
    from callback_queue.detection import DetectRules
    from callback_queue.ingest import Ingestor
    from callback_queue.store import Store

    now = datetime.now(UTC)
    t0 = int(now.timestamp()) - 3600
    store = Store(store_url)
    Ingestor(store, FakeClock(now), DetectRules(min_wait_seconds=0)).ingest(
        [Attempt("seed", f"{number}-{k}", number, number, t0 + k * 60, t0 + k * 60 + 30, Outcome.FAILED, "abandon",
                 30, "q", Origin.QUEUE_LOG) for k in range(3)])
    store.dispose()


def callback_of(cfg: Path, store_url: str, number: str) -> dict[str, Any] | None:
    eng = sa.create_engine(store_url)
    try:
        with eng.connect() as c:
            cid = c.execute(sa.text("SELECT id FROM callbacks WHERE number = :n"), {"n": number}).scalar()
    finally:
        eng.dispose()
    if cid is None:
        return None
    return json.loads(cli(cfg, "callbacks", "show", str(cid), "--format", "json").stdout)


def test_sighup_moves_the_dialer_and_leaves_its_calls_to_reconcile(tmp_path: Path, store_url: str) -> None:
    """The dialer's PBX removed and [dialer.ami] pointed at another: the old link is logged off, the
    call under way on it is reconciled when its lease runs out (not re-dialed), new calls go to B."""
    cfg = tmp_path / "callbackd.toml"
    first, second = "+12025550100", "+12025550200"
    with AmiTestServer() as a, AmiTestServer() as b:
        a.outcome_delay = 120  # the call placed on A is still ringing when A is removed
        write(cfg, store_url, pbx("a", a.port), pbx("b", b.port), tail=DIALER.format(pbx="a"))
        seed(store_url, first)
        d = Daemon(cfg)
        try:
            assert a.wait_for(lambda: len(a.originates) == 1, 30), "the due callback was never placed on A"
            assert a.originates[0]["Channel"] == "Local/12025550100@citizens"
            write(cfg, store_url, pbx("b", b.port), tail=DIALER.format(pbx="b"))
            d.reload()
            # the source and the dialer both let go of A: it is logged off and closed
            assert a.wait_for(lambda: logoffs(a) == 1 and not a.logged_in(), 10), "A was not logged off"
            assert b.connections == 1  # B (unchanged) kept its link

            def reconciled() -> dict[str, Any] | None:
                shown = callback_of(cfg, store_url, first)
                return shown if shown and shown["callback"]["state"] != "dialing" else None

            shown = wait_for(reconciled, 20)
            assert shown, "the call left on A was never reconciled"
            ended = [e for e in shown["events"] if e["from_state"] == "dialing"]
            assert len(ended) == 1 and ended[0]["detail"].get("reconciled") is True, shown["events"]
            # a new callback is dialed through B
            seed(store_url, second)
            assert b.wait_for(lambda: len(b.originates) == 1, 20), "nothing was dialed through B"
            assert b.originates[0]["Channel"] == "Local/12025550200@citizens"
            assert wait_for(lambda: (callback_of(cfg, store_url, second) or {}).get("callback", {})
                            .get("state") == "reached", 20)
        finally:
            code = d.stop()
    assert code == 0, d.log.read_text()[-3000:]
    assert len(a.originates) == 1  # the call left on A was never dialed again, there or on B
    assert [o["Channel"] for o in b.originates] == ["Local/12025550200@citizens"]
    moved = events(d.log, "ami.dialer_moved")
    assert len(moved) == 1 and moved[0]["from_pbx"] == "a" and moved[0]["pbx"] == "b" \
        and len(moved[0]["calls_left_to_reconcile"]) == 1, moved
    assert events(d.log, "ami.pbx_removed", pbx="a", link_closed=True)
