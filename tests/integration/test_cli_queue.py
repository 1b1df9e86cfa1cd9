"""The operators' CLI, driven in-process through click's runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.numbers import mask
from callback_queue.store import Store
from daemon.cli import EX_CONFIG, cli
from daemon.cli_callbacks import LIST_COLUMNS

PG_ADMIN = os.environ.get("CALLBACKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# the most failures first, then the longest waiting
FOUR = "+8613900000004"      # 4 failures, triggered 2h ago
OLD = "+8613900000001"       # 3 failures, triggered 3h ago
NEW = "+8613900000002"       # 3 failures, triggered 1h ago
ORDER = [FOUR, OLD, NEW]


def _failures(number: str, first: datetime, n: int) -> list[Attempt]:
    start = int(first.timestamp())
    return [Attempt(system="pbx", call_id=f"call{number[-2:]}-{i}", caller=number[3:], number=number,
                    started_ts=start + i * 60, ended_ts=start + i * 60 + 20, outcome=Outcome.FAILED,
                    reason="abandon", wait_seconds=20, queue="hotline", origin=Origin.QUEUE_LOG)
            for i in range(n)]


class Invoker:
    """Runs the CLI in-process and then disposes the stores it opened.

    The CLI never disposes the Store it opens (see test_cli_releases_its_database_connections);
    without this, its pooled connections are garbage-collected open and the ResourceWarning
    (an error under filterwarnings=error) lands on whichever test runs next.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import daemon.app

        self.opened: list[Store] = []
        real = daemon.app.open_store

        def recording(settings):  # type: ignore[no-untyped-def]
            s = real(settings)
            self.opened.append(s)
            return s

        monkeypatch.setattr(daemon.app, "open_store", recording)
        self.runner = CliRunner()

    def __call__(self, args: list[str], env: dict[str, str] | None = None, dispose: bool = True) -> Result:
        try:
            return self.runner.invoke(cli, args, env=env, catch_exceptions=False)
        finally:
            if dispose:
                while self.opened:
                    self.opened.pop().dispose()


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch) -> Iterator[Invoker]:
    inv = Invoker(monkeypatch)
    yield inv
    for s in inv.opened:
        s.dispose()


pytestmark = pytest.mark.usefixtures("clean_cli_env")


def _write_config(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(
        f'[daemon]\nstate_dir = "{path.parent / "state"}"\ntimezone = "UTC"\n\n'
        f'[store]\nurl = "{url}"\n\n[queue]\nlease = "15m"\n\n'
        f'[retry.rules]\nbusy = {{ delay = "10m", times = 3 }}\nno-answer = {{ delay = "30m", times = 2 }}\n{extra}',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def seeded(store: Store) -> dict[str, int]:
    """Three due callbacks (the CLI claims with the system clock: all in the real past)."""
    now = datetime.now(UTC).replace(microsecond=0)
    attempts = (_failures(OLD, now - timedelta(hours=3, minutes=2), 3)
                + _failures(FOUR, now - timedelta(hours=2, minutes=2), 4)
                + _failures(NEW, now - timedelta(hours=1, minutes=2), 3))
    Ingestor(store, FakeClock(now - timedelta(minutes=30)), DetectRules(threshold=3, min_wait_seconds=0)).ingest(
        attempts)
    with store.read() as conn:
        return {n: i for i, n in conn.execute(sa.text("SELECT id, number FROM callbacks"))}


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Path:
    return _write_config(tmp_path / "callbackd.toml", store_url)


@pytest.fixture
def run(config: Path, invoke: Invoker) -> Iterator:
    def run_(*args: str, cfg: Path | None = config, env: dict[str, str] | None = None) -> Result:
        argv = [*args, "--config", str(cfg)] if cfg is not None else list(args)
        return invoke(argv, env=env)

    yield run_


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


# -- list ----------------------------------------------------------------------------------------
def test_list_json_has_full_numbers_in_queue_order(run, seeded: dict[str, int]) -> None:
    rows = json.loads(_ok(run("callbacks", "list", "--format", "json")).stdout)
    assert [r["number"] for r in rows] == ORDER
    assert [r["failures"] for r in rows] == [4, 3, 3]
    assert {r["state"] for r in rows} == {"pending"}
    assert [r["id"] for r in rows] == [seeded[n] for n in ORDER]
    assert all(r["due_at"].endswith("Z") for r in rows)


def test_list_table_masks_numbers_unless_asked(run, seeded: dict[str, int]) -> None:
    out = _ok(run("callbacks", "list")).stdout
    for n in ORDER:
        assert n not in out
        assert mask(n) in out
    assert "callbacks (3; times in UTC)" in out
    shown = _ok(run("callbacks", "list", "--show-numbers")).stdout
    for n in ORDER:
        assert n in shown
    assert shown.index(FOUR) < shown.index(OLD) < shown.index(NEW)


def test_list_csv_has_a_header_and_stable_columns(run, seeded: dict[str, int]) -> None:
    out = _ok(run("callbacks", "list", "--format", "csv")).stdout
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == list(LIST_COLUMNS)
    assert reader.fieldnames[:4] == ["id", "state", "number", "failures"]
    rows = list(reader)
    assert [r["number"] for r in rows] == ORDER
    assert [r["claimed_by"] for r in rows] == ["", "", ""]  # None is an empty cell
    # no rows: the same header all the same
    empty = _ok(run("callbacks", "list", "--state", "reached", "--format", "csv")).stdout
    assert empty.splitlines() == [",".join(LIST_COLUMNS)]


def test_list_filters(run, seeded: dict[str, int]) -> None:
    _ok(run("callbacks", "claim", "--operator", "alice", "--format", "json"))
    def numbers(*args: str) -> list[str]:
        return [r["number"] for r in json.loads(_ok(run("callbacks", "list", "--format", "json", *args)).stdout)]
    assert numbers("--state", "dialing") == [FOUR]
    assert numbers("--state", "pending") == [OLD, NEW]
    assert numbers("--state", "open") == ORDER
    assert numbers("--due") == [OLD, NEW]
    assert numbers("--limit", "1") == [FOUR]
    bad = run("callbacks", "list", "--state", "nonsense")
    assert bad.exit_code == 2
    assert "unknown state" in bad.stderr


# -- claim, close, show, cancel ------------------------------------------------------------------
def test_claim_close_show_cancel(run, seeded: dict[str, int]) -> None:
    got = json.loads(_ok(run("callbacks", "claim", "--operator", "alice", "--count", "2", "--format", "json")).stdout)
    assert [c["number"] for c in got] == [FOUR, OLD]
    assert {c["state"] for c in got} == {"dialing"}
    assert {c["claimed_by"] for c in got} == {"alice"}
    first, second = (c["id"] for c in got)
    lease = datetime.fromisoformat(got[0]["lease_until"].replace("Z", "+00:00"))
    assert timedelta(minutes=14) < lease - datetime.now(UTC) <= timedelta(minutes=15)

    closed = _ok(run("callbacks", "close", str(first), "--outcome", "busy", "--operator", "alice",
                     "--note", "line busy"))
    assert closed.stdout.startswith(f"callback {first}: retry_wait, next try ")

    detail = json.loads(_ok(run("callbacks", "show", str(first), "--format", "json")).stdout)
    cb = detail["callback"]
    assert (cb["id"], cb["number"], cb["state"], cb["dial_attempts"], cb["outcome"]) == (
        first, FOUR, "retry_wait", 1, "busy")
    due = datetime.fromisoformat(cb["due_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=9) < due - datetime.now(UTC) <= timedelta(minutes=10)
    assert [a["call_id"] for a in detail["attempts"]] == [f"call04-{i}" for i in range(4)]
    assert {a["reason"] for a in detail["attempts"]} == {"abandon"}
    assert [(e["event"], e["actor"], e["from_state"], e["to_state"]) for e in detail["events"]] == [
        ("opened", "detector", None, "pending"),
        ("claimed", "alice", "pending", "dialing"),
        ("closed", "alice", "dialing", "retry_wait"),
    ]
    assert detail["events"][-1]["detail"]["note"] == "line busy"

    # the table form of show masks the number, and has both sections
    table = _ok(run("callbacks", "show", str(first))).stdout
    assert FOUR not in table and mask(FOUR) in table
    assert "attempts" in table and "history" in table and "retry_wait" in table

    cancelled = _ok(run("callbacks", "cancel", str(second), "--reason", "x", "--operator", "admin"))
    assert cancelled.stdout.strip() == f"callback {second}: cancelled"
    detail = json.loads(_ok(run("callbacks", "show", str(second), "--format", "json")).stdout)
    assert (detail["callback"]["state"], detail["callback"]["close_reason"]) == ("cancelled", "x")
    assert detail["events"][-1] == {**detail["events"][-1], "event": "cancelled", "actor": "admin",
                                    "detail": {"reason": "x"}}


def test_claim_when_nothing_is_due(run, seeded: dict[str, int]) -> None:
    _ok(run("callbacks", "claim", "--operator", "alice", "--count", "3", "--format", "json"))
    r = _ok(run("callbacks", "claim", "--operator", "bob", "--format", "json"))
    assert json.loads(r.stdout) == []
    assert "nothing is due" in r.stderr


def test_release(run, seeded: dict[str, int]) -> None:
    (c,) = json.loads(_ok(run("callbacks", "claim", "--operator", "alice", "--format", "json")).stdout)
    r = run("callbacks", "release", str(c["id"]), "--operator", "bob")
    assert r.exit_code == 1 and "claimed by alice" in r.stderr
    assert _ok(run("callbacks", "release", str(c["id"]), "--operator", "alice")).stdout.strip() == (
        f"callback {c['id']}: pending")


# -- errors --------------------------------------------------------------------------------------
def test_errors_exit_1_with_a_message_on_stderr(run, seeded: dict[str, int]) -> None:
    missing = max(seeded.values()) + 1000
    for args in (("callbacks", "show", str(missing)),
                 ("callbacks", "close", str(missing), "--outcome", "reached", "--operator", "alice"),
                 ("callbacks", "cancel", str(missing), "--reason", "x")):
        r = run(*args)
        assert r.exit_code == 1, args
        assert f"no callback {missing}" in r.stderr
        assert r.stdout == ""

    unclaimed = seeded[NEW]
    r = run("callbacks", "close", str(unclaimed), "--outcome", "reached", "--operator", "alice")
    assert r.exit_code == 1
    assert r.stderr.startswith("callbackd: ")
    assert "not claimed" in r.stderr and "pending" in r.stderr
    # nothing changed
    detail = json.loads(_ok(run("callbacks", "show", str(unclaimed), "--format", "json")).stdout)
    assert detail["callback"]["state"] == "pending"
    assert [e["event"] for e in detail["events"]] == ["opened"]

    _ok(run("callbacks", "claim", "--operator", "alice"))  # takes FOUR
    r = run("callbacks", "close", str(seeded[FOUR]), "--outcome", "reached", "--operator", "bob")
    assert r.exit_code == 1 and "claimed by alice" in r.stderr
    forced = _ok(run("callbacks", "close", str(seeded[FOUR]), "--outcome", "reached", "--operator", "bob",
                     "--force"))
    assert forced.stdout.strip() == f"callback {seeded[FOUR]}: reached"


def test_config_check_rejects_bad_values_with_exit_78(run, tmp_path: Path, store_url: str) -> None:
    bad = _write_config(tmp_path / "bad.toml", store_url, "\n[detect]\nthreshold = 0\n")
    r = run("config", "check", cfg=bad)
    assert r.exit_code == EX_CONFIG == 78
    assert "detect.threshold" in r.stderr
    assert r.stdout == ""
    # the same refusal for any command that reads the configuration
    r = run("callbacks", "list", cfg=bad)
    assert r.exit_code == 78 and "detect.threshold" in r.stderr

    # what only the daemon's start and reload used to refuse: a PBX name given twice
    pbx = '\n[[sources.ami]]\nname = "pbx1"\nhost = "127.0.0.1"\nusername = "u"\nsecret = "s"\n'
    twice = _write_config(tmp_path / "twice.toml", store_url, pbx + pbx.replace("127.0.0.1", "127.0.0.2"))
    r = run("config", "check", cfg=twice)
    assert r.exit_code == 78 and "sources.ami.name" in r.stderr and "pbx1" in r.stderr

    good = _ok(run("config", "check", "--format", "json"))
    data = json.loads(good.stdout)
    assert data["detect"]["threshold"] == 3
    assert data["daemon"]["timezone"] == "UTC"


def test_config_before_or_after_the_subcommand_and_from_the_environment(
        config: Path, tmp_path: Path, seeded: dict[str, int], invoke: Invoker) -> None:
    expect = [seeded[n] for n in ORDER]

    def ids(r: Result) -> list[int]:
        assert r.exit_code == 0, (r.stdout, r.stderr)
        return [x["id"] for x in json.loads(r.stdout)]

    assert ids(invoke(["--config", str(config), "callbacks", "list", "--format", "json"])) == expect
    assert ids(invoke(["callbacks", "list", "--format", "json", "--config", str(config)])) == expect
    assert ids(invoke(["callbacks", "list", "--format", "json"],
                      env={"CALLBACKD_CONFIG": str(config)})) == expect
    # the explicit flag wins over the environment
    elsewhere = _write_config(tmp_path / "other.toml", f"sqlite:///{tmp_path / 'nowhere.db'}")
    assert ids(invoke(["callbacks", "list", "--format", "json", "--config", str(config)],
                      env={"CALLBACKD_CONFIG": str(elsewhere)})) == expect
    assert ids(invoke(["--config", str(config), "callbacks", "list", "--format", "json"],
                      env={"CALLBACKD_CONFIG": str(elsewhere)})) == expect
    # and the environment alone really is read: "elsewhere" is an empty database
    r = invoke(["callbacks", "list", "--format", "json"], env={"CALLBACKD_CONFIG": str(elsewhere)})
    assert r.exit_code == 1 and "callbackd db upgrade" in r.stderr
    # a config file that does not exist is a configuration error
    r = invoke(["--config", str(tmp_path / "missing.toml"), "callbacks", "list"])
    assert r.exit_code == 78 and "does not exist" in r.stderr


# -- resources ------------------------------------------------------------------------------------
def test_cli_releases_its_database_connections(config: Path, seeded: dict[str, int], invoke: Invoker) -> None:
    """A command run in-process (the runner, `main(argv)`) leaves no database connection open.

    Fails today: daemon/cli.py `_store()` opens a Store (a pooled engine) that nothing disposes,
    so its connection stays checked in to the pool until garbage collection closes it (psycopg:
    ResourceWarning "was deleted while still open").
    """
    r = invoke(["callbacks", "list", "--format", "json", "--config", str(config)], dispose=False)
    assert r.exit_code == 0, r.stderr
    (opened,) = invoke.opened
    pool = opened.engine.pool
    still_open = pool.checkedin() if hasattr(pool, "checkedin") else 0  # NullPool keeps none
    invoke.opened.clear()
    opened.dispose()  # what the CLI should have done; keeps the leak out of the other tests
    assert still_open == 0, f"the CLI left {still_open} pooled connection(s) open after the command"


# -- db ------------------------------------------------------------------------------------------


def test_db_current_on_an_empty_database(tmp_path: Path, empty_url: str, invoke: Invoker) -> None:
    cfg = _write_config(tmp_path / "empty.toml", empty_url)
    r = invoke(["db", "current", "--config", str(cfg)])
    assert r.exit_code == 1
    assert "current: (empty)" in r.stdout
    assert "callbackd db upgrade" in r.stderr
    # the queue commands refuse to work on it, with the same hint
    r = invoke(["callbacks", "list", "--config", str(cfg)])
    assert r.exit_code == 1
    assert "callbackd db upgrade" in r.stderr
    # upgrade, then it is current
    r = invoke(["db", "upgrade", "--config", str(cfg)])
    assert r.exit_code == 0, r.stderr
    assert "(empty) -> " in r.stdout
    r = invoke(["db", "current", "--config", str(cfg)])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[-1] == lines[1].split()[-1] != "(empty)"
