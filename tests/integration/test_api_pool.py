"""API handlers run at most as many at once as the store's pool keeps connections: 16 clients
at once do not open connections beyond the pool (each would be closed when given back and opened
again for the next request), they wait their turn for a handler."""

from __future__ import annotations

import asyncio
import threading

import httpx2 as httpx
from console_support import app, bearer, seed, services, tokens

from callback_queue.clock import FakeClock
from callback_queue.store import Store

CLIENTS = 16


def test_sixteen_clients_share_the_pool_without_opening_more(store: Store, clock: FakeClock) -> None:
    seed(store, clock, 3)
    token = tokens(store, clock)["operator"]
    svc = services(store, clock)
    pool_size = store.engine.pool.size()  # type: ignore[attr-defined]
    assert pool_size < CLIENTS
    lock = threading.Condition()
    state = {"active": 0, "peak": 0, "done": 0}
    real_list = svc.queue.list_json  # what the list route calls

    def list_and_hold(**kw):  # type: ignore[no-untyped-def]
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
            lock.notify_all()
            # hold the slot until every client is inside (only possible without a limit) or a while passed
            lock.wait_for(lambda: state["active"] >= CLIENTS, timeout=1.0)
        try:
            return real_list(**kw)
        finally:
            with lock:
                state["active"] -= 1
                state["done"] += 1

    svc.queue.list_json = list_and_hold  # type: ignore[method-assign]
    connects: list[int] = []
    from sqlalchemy import event

    event.listen(store.engine, "connect", lambda *a: connects.append(1))
    before = store.engine.pool.checkedin()  # type: ignore[attr-defined]

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app(svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            rs = await asyncio.gather(*(client.get("/api/callbacks?due=true", headers=bearer(token))
                                        for _ in range(CLIENTS)))
        return [r.status_code for r in rs]

    codes = asyncio.run(run())
    assert codes == [200] * CLIENTS and state["done"] == CLIENTS
    assert state["peak"] == pool_size, state  # every slot used, never more
    # and no connection was opened beyond what the pool keeps
    assert len(connects) <= max(0, pool_size - before), (len(connects), pool_size, before)
