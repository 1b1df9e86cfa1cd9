"""Reports on a known dataset: every figure equals a count computed directly from the tables,
on SQLite and PostgreSQL; the CLI, the API and the console give the same numbers."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from console_support import RULES, app, bearer, failures, services, tokens
from starlette.testclient import TestClient

from callback_queue import reports
from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from sms.followups import Followups

TZ = ZoneInfo("Asia/Shanghai")
DAYS = [date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)]


def _at(d: date, hour: int) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def build_dataset(store: Store, clock: FakeClock) -> dict[str, int]:
    """3 callers flagged on the 25th, 4 on the 26th, 5 on the 27th (10:00 local), and one follow-up."""
    ids: dict[str, int] = {}
    for d, prefix, n in zip(DAYS, "abc", (3, 4, 5)):
        batch = [a for i in range(n) for a in failures(f"+86139{d.day:02d}{i:06d}", _at(d, 2))]
        clock.set(_at(d, 2) + timedelta(minutes=5))
        for i, cid in enumerate(Ingestor(store, clock, RULES).ingest(batch).opened):
            ids[f"{prefix}{i + 1}"] = cid
    q = CallbackQueue(store, clock)

    def call(key: str, when: datetime, outcome: str) -> None:
        clock.set(when)
        q.claim_one(ids[key], "otto")
        q.close(ids[key], "otto", outcome)

    call("a1", _at(DAYS[0], 12), "reached")           # within SLA
    call("a2", _at(DAYS[0], 12), "busy")              # first call within SLA ...
    call("a2", _at(DAYS[2], 9), "reached")            # ... reached later
    call("b1", _at(DAYS[2], 9), "reached")            # 31 h after: outside the SLA
    call("b2", _at(DAYS[1], 3), "no-answer")
    clock.set(_at(DAYS[2], 9))
    q.cancel(ids["c1"], "otto", "got through")
    ids["f1"] = Followups(store, clock).add("+8613700000001", "WO-1").id
    now = clock.now()
    with store.write() as conn:
        for key, state, sent in (("b2", "delivered", True), ("b3", "sent", True), ("b4", "failed", False)):
            conn.execute(t.sms_messages.insert().values(
                callback_id=ids[key], number="+8613900000000", sender="console", lang="zh-CN", body="...",
                state=state, sent_at=now if sent else None, created_at=now, updated_at=now))
        for i, (key, resolved, satisfaction) in enumerate((("b2", "resolved", "satisfied"),
                                                           ("b3", "partly", "basic"),
                                                           ("a1", "not", "unsatisfied"))):
            link = conn.execute(t.eval_links.insert().values(
                callback_id=ids[key], token_hash=f"{i:064d}", created_at=now, expires_at=now + timedelta(days=7),
                used_at=now).returning(t.eval_links.c.id)).scalar_one()
            conn.execute(t.evaluations.insert().values(callback_id=ids[key], link_id=link, resolved=resolved,
                                                       satisfaction=satisfaction, lang="zh-CN", created_at=now))
        # the planner's SLA due time: 24 h after the trigger
        for cid, trig in conn.execute(sa.select(t.callbacks.c.id, t.callbacks.c.triggered_at)).all():
            conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == cid)
                         .values(sla_due_at=trig + timedelta(hours=24)))
    return ids


def direct_counts(store: Store, day: date) -> dict[str, int]:
    """The same figures as plain SQL counts, one statement each."""
    c, e, s, ev = t.callbacks, t.callback_events, t.sms_messages, t.evaluations
    lo = datetime(day.year, day.month, day.day, tzinfo=TZ)
    cohort = sa.and_(c.c.triggered_at >= lo, c.c.triggered_at < lo + timedelta(days=1))

    def n(*where: sa.ColumnElement[bool]) -> int:
        with store.read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(c).where(cohort, *where)).scalar_one()

    def has(table: sa.Table, *where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return sa.exists().where(table.c.callback_id == c.c.id, *where)

    return {
        "flagged": n(c.c.kind == "recall"),
        "followups": n(c.c.kind == "followup"),
        "called_back": n(has(e, e.c.event == "closed")),
        "within_sla": n(has(e, e.c.event == "closed", e.c.at <= c.c.sla_due_at)),
        "reached": n(has(e, e.c.to_state == "reached")),
        "sms_sent": n(has(s, s.c.sent_at.is_not(None))),
        "sms_delivered": n(has(s, s.c.state == "delivered")),
        "rated": n(has(ev)),
        "satisfied": n(has(ev, ev.c.satisfaction.in_(("satisfied", "basic")))),
        "resolved": n(has(ev, ev.c.resolved == "resolved")),
    }


@pytest.fixture
def dataset(store: Store, clock: FakeClock) -> dict[str, int]:
    return build_dataset(store, clock)


def test_report_equals_direct_counts(store: Store, dataset: dict[str, int]) -> None:
    rep = reports.build(store, TZ, DAYS[0] - timedelta(days=1), DAYS[-1])
    assert [r.period for r in rep.rows] == ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"]
    for row in rep.rows:
        got = {f: getattr(row, f) for f in reports.FIELDS}
        assert got == direct_counts(store, row.start), row.period
    # and the dataset is what it says, so the comparison above is not vacuous
    by_day = {r.period: r for r in rep.rows}
    a, b, c = by_day["2026-11-25"], by_day["2026-11-26"], by_day["2026-11-27"]
    assert (a.flagged, a.called_back, a.within_sla, a.reached, a.rated, a.satisfied) == (3, 2, 2, 2, 1, 0)
    assert (b.flagged, b.called_back, b.within_sla, b.reached) == (4, 2, 1, 1)
    assert (b.sms_sent, b.sms_delivered, b.rated, b.satisfied, b.resolved) == (2, 1, 2, 2, 1)
    assert (c.flagged, c.followups, c.called_back) == (5, 1, 0)
    assert rep.rates() == {"response": round(3 / 13, 4), "reached": round(3 / 13, 4),
                           "satisfaction": round(2 / 3, 4), "resolution": round(1 / 3, 4)}


def test_weeks_sum_the_days_and_the_sla_falls_back(store: Store, dataset: dict[str, int]) -> None:
    days = reports.build(store, TZ, DAYS[0], DAYS[-1])
    weeks = reports.build(store, TZ, DAYS[0], DAYS[-1], by="week")
    assert [r.period for r in weeks.rows] == ["2026-W48"]
    assert weeks.total.as_json() | {"period": "", "start": ""} == days.total.as_json() | {"period": "", "start": ""}
    with store.write() as conn:
        conn.execute(sa.update(t.callbacks).values(sla_due_at=None))
    assert reports.build(store, TZ, DAYS[0], DAYS[-1]).total.within_sla == 3          # default 24 h
    assert reports.build(store, TZ, DAYS[0], DAYS[-1], sla=timedelta(hours=9)).total.within_sla == 1  # b2
    assert reports.build(store, TZ, DAYS[0], DAYS[-1], sla=timedelta(minutes=30)).total.within_sla == 0


def test_cli_api_and_console_give_the_same_numbers(store: Store, store_url: str, clock: FakeClock,
                                                   dataset: dict[str, int], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from daemon.cli import cli

    expected = reports.build(store, TZ, DAYS[0], DAYS[-1]).as_json()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{store_url}"\n')
    r = CliRunner().invoke(cli, ["report", "--since", "2026-11-25", "--until", "2026-11-27", "--format", "json",
                                 "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == expected
    r = CliRunner().invoke(cli, ["report", "--since", "2026-11-25", "--until", "2026-11-27", "--config", str(cfg)])
    assert r.exit_code == 0 and "total" in r.stdout and "response 23.1%" in r.stdout
    toks = tokens(store, clock)
    with TestClient(app(services(store, clock))) as client:
        params = {"since": "2026-11-25", "until": "2026-11-27"}
        got = client.get("/api/reports", params=params, headers=bearer(toks["admin"]))
        assert got.status_code == 200 and got.json() == expected
        csv = client.get("/api/reports", params=params | {"format": "csv"}, headers=bearer(toks["admin"])).text
        lines = csv.splitlines()
        assert lines[0] == "period,start," + ",".join(reports.FIELDS)
        assert lines[-1].startswith("total,2026-11-25,12,1,4,3,3,2,1,3,2,1")
        bad = client.get("/api/reports", params={"since": "2026-11-27", "until": "2026-11-01"},
                         headers=bearer(toks["admin"]))
        assert bad.status_code == 400 and "before" in bad.json()["error"]["message"]
