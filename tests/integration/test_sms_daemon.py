"""The daemon wires the SMS feature in: the outbox job sends the fallback SMS and the daemon's own HTTP
server serves the link in it."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

from sms_support import add_callback, callback_state, settings_for

from callback_queue.store import Store
from daemon.app import Daemon
from sms.outbox import token_in
from sms.senders.console import ConsoleSender


def test_daemon_sends_the_sms_and_serves_its_link(store: Store, tmp_path: Path) -> None:
    from callback_queue.clock import SystemClock

    clock = SystemClock()
    cid = add_callback(store, clock.now(), "+8613800138001")
    out = tmp_path / "sms.jsonl"
    settings = settings_for(tmp_path, store.url, http={"host": "127.0.0.1", "port": 0},
                            sms={"poll_interval": "0.2s", "console_path": str(out)})
    daemon = Daemon(settings, store=Store(store.url), clock=clock)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not ConsoleSender(out).messages() or daemon.http is None or not daemon.http.server.started:
            assert time.monotonic() < deadline, "the daemon sent no SMS"
            time.sleep(0.05)
        assert "sms" in [c.name for c in daemon.components]
        [msg] = ConsoleSender(out).messages()
        token = token_in(str(msg["body"]))
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http.port}/r/{token}", timeout=10) as r:
            page = r.read().decode()
        assert r.status == 200 and "您的诉求是否已解决" in page and "<script" not in page
        assert callback_state(store, cid) == "sms_sent"
    finally:
        daemon.stop()
        thread.join(timeout=15)
    assert not thread.is_alive()
