"""Prometheus /metrics: callbackd_* series computed from the database at scrape time.

A custom collector runs a handful of indexed queries per scrape (time-bounded
ranges on attempts.started_ts and callback_events.at, the small open part of
callbacks through its (state, due_at) index) and keeps the result for
`[console] metrics_cache` so several scrapers cannot load the database. Several
daemons on one PostgreSQL report the same figures: they are the database's;
`callbackd_leader` and `callbackd_check_up` are this instance's.
/metrics takes a bearer token (any role) unless `[console] metrics_public = true`.

/metrics answers while the database is down: the figures of the last good scrape are
served again with `callbackd_check_up{check="database"} 0`, and a token that was
accepted for /metrics before is accepted again when it cannot be looked up (a
token revoked or a user disabled in this process is not; an outage is no time to
lock the monitoring out).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from callback_queue import schema as t
from callback_queue.callbacks import CLAIMABLE_STATES, OPEN_STATES
from callback_queue.errors import StoreError

from .app import ROUTE_PROVIDERS, Services
from .auth import bearer_user, translate

DAY = 86400


def _json_field(conn: Any, column: Any, key: str) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        return sa.cast(column, JSONB)[key].astext
    return sa.func.json_extract(column, f"$.{key}")


class DatabaseCollector:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.ttl = services.settings.console.metrics_cache.total_seconds()
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None
        self._failed: float | None = None  # when the last scrape's queries failed (monotonic)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            due = self._cached is None or now - self._cached[0] >= self.ttl
            if due and (self._failed is None or now - self._failed >= self.ttl):
                try:
                    self._cached, self._failed = (time.monotonic(), list(self._compute())), None
                except StoreError:  # the last good figures again (if any), the database's check down, and
                    self._failed = time.monotonic()  # no new try before the cache period is over
            database = (self._failed is None, "ok" if self._failed is None else "failing")
            families = self._cached[1] if self._cached is not None else []
        yield from families
        yield from self._instance(database)

    def _compute(self) -> Iterator[Metric]:
        s = self.services
        now = s.clock.now()
        since_ts = int(now.timestamp()) - DAY
        a, cb, ev = t.attempts, t.callbacks, t.callback_events
        open_states = [x.value for x in OPEN_STATES]
        with s.store.read() as conn:
            attempts = conn.execute(sa.select(a.c.outcome, a.c.reason, sa.func.count())
                                    .where(a.c.started_ts >= since_ts).group_by(a.c.outcome, a.c.reason)).all()
            states = conn.execute(sa.select(cb.c.state, cb.c.kind, sa.func.count())
                                  .group_by(cb.c.state, cb.c.kind)).all()
            due = conn.execute(sa.select(sa.func.count()).select_from(cb).where(
                cb.c.state.in_([x.value for x in CLAIMABLE_STATES]), cb.c.due_at <= now)).scalar_one()
            outcome = _json_field(conn, ev.c.detail, "outcome").label("outcome")
            dials = conn.execute(sa.select(outcome, sa.func.count())
                                 .where(ev.c.at >= now - timedelta(days=1), ev.c.event == "closed")
                                 .group_by(outcome)).all()
            sms = conn.execute(sa.select(t.sms_messages.c.state, sa.func.count())
                               .group_by(t.sms_messages.c.state)).all()
            breaches = conn.execute(sa.select(sa.func.count()).select_from(cb).where(
                cb.c.state.in_(open_states), cb.c.sla_breached_at.is_not(None))).scalar_one()
            overdue = conn.execute(sa.select(sa.func.count()).select_from(cb).where(
                cb.c.state.in_(open_states), cb.c.sla_due_at < now)).scalar_one()
            cursors = conn.execute(sa.select(t.source_cursors.c.name, t.source_cursors.c.updated_at)).all()

        g = GaugeMetricFamily("callbackd_attempts_24h", "Inbound attempts started in the last 24 hours",
                              labels=["outcome", "reason"])
        for o, r, n in attempts:
            g.add_metric([o, r], n)
        yield g
        g = GaugeMetricFamily("callbackd_callbacks", "Callbacks by state and kind", labels=["state", "kind"])
        seen = {(st, k) for st, k, _ in states}
        for st, k, n in states:
            g.add_metric([st, k], n)
        for st in OPEN_STATES:  # open states are always present, so alerts can rely on them
            if (st.value, "recall") not in seen:
                g.add_metric([st.value, "recall"], 0)
        yield g
        yield GaugeMetricFamily("callbackd_callbacks_due", "Open callbacks that can be claimed now", value=due)
        g = GaugeMetricFamily("callbackd_dial_outcomes_24h", "Calls placed in the last 24 hours by outcome",
                              labels=["outcome"])
        for o, n in dials:
            g.add_metric([o or "unknown"], n)
        yield g
        g = GaugeMetricFamily("callbackd_sms_messages", "SMS messages by status (pending, sending, sent, "
                              "delivered, failed, skipped)", labels=["status"])
        for st, n in sms:
            g.add_metric([st], n)
        yield g
        yield GaugeMetricFamily("callbackd_planner_sla_breaches", "Open callbacks the current plan puts past "
                                "their SLA (cleared when a re-plan brings one back within it)", value=breaches)
        yield GaugeMetricFamily("callbackd_sla_overdue", "Open callbacks past their SLA due time", value=overdue)
        g = GaugeMetricFamily("callbackd_source_idle_seconds", "Seconds since a call-log source last stored "
                              "anything (its cursor moved): it climbs through every quiet night; alert on it only "
                              "for hours that always have calls", labels=["source"])
        for name, updated in cursors:
            g.add_metric([name], max(0.0, (now - updated).total_seconds()))
        yield g

    def _instance(self, database: tuple[bool, str]) -> Iterator[Metric]:
        """This instance's series, computed at every scrape (never cached): leadership and readiness checks."""
        leader = self.services.extra.get("leader")
        if leader is not None:
            g = GaugeMetricFamily("callbackd_leader", "This instance leads (1: it runs the singleton duties - "
                                  "file tails, planning) or stands by (0)", labels=["instance"])
            g.add_metric([str(self.services.extra.get("instance", ""))], float(bool(leader())))
            yield g
        checks = GaugeMetricFamily("callbackd_check_up", "Readiness checks (1 = passing): the database (this "
                                   "scrape's queries) and each link's", labels=["check"])
        checks.add_metric(["database"], float(database[0]))
        ami: list[float] = []
        for name, check in self.services.checks.items():
            try:
                ok = bool(check()[0])
            except Exception:  # noqa: BLE001 - a failing check is a 0, not a failed scrape
                ok = False
            checks.add_metric([name], float(ok))
            if "ami" in name.lower():
                ami.append(float(ok))
        yield checks
        if ami:  # only once the AMI source registers its check
            yield GaugeMetricFamily("callbackd_ami_link_up", "AMI connection up (1) or down (0)", value=min(ami))


def _metrics_user(services: Services, request: Request) -> Any:
    """bearer_user; while the database cannot be asked, a token this process accepted for /metrics before."""
    from callback_queue import users as _users
    from callback_queue.users import digest

    key = digest(request.headers.get("authorization", "").partition(" ")[2].strip())
    known: dict[str, tuple[int, Any]] = services.extra.setdefault("metrics_tokens", {})
    try:
        user = bearer_user(services, request)
    except StoreError:
        hit = known.get(key)
        if hit is None or hit[0] != _users.revocations:
            raise
        return hit[1]
    if len(known) < 1000:
        known[key] = (_users.revocations, user)
    return user


def metrics_routes(services: Services) -> list[BaseRoute]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(services))  # type: ignore[arg-type]

    async def metrics(request: Request) -> Response:
        if not services.settings.console.metrics_public:
            try:
                await run_in_threadpool(_metrics_user, services, request)
            except Exception as exc:  # noqa: BLE001
                resp = translate(exc)
                if resp is None:
                    raise
                return resp
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]


ROUTE_PROVIDERS.append(metrics_routes)
