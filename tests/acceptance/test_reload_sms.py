"""SIGHUP with bad SMS templates: refused as a whole (one daemon.reload_failed), the daemon keeps running;
a start with them exits 78 (EX_CONFIG: systemd does not restart into it)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from test_daemon import CALLBACKD, cli, wait_for
from test_reload import config

BAD = '\n[sms]\ntemplates = { "recall.zh-CN" = "您好 没有链接", "recal.fr" = "x" }\n'


def test_sighup_with_bad_templates_is_refused_and_start_exits_78(tmp_path: Path, store_url: str):
    cfg = config(tmp_path, store_url, "12:00-13:00")
    cli(cfg, "db", "upgrade")
    (tmp_path / "queue_log").write_text("")
    good = cfg.read_text()
    log = tmp_path / "stderr.log"

    def logged(event: str) -> bool:
        return any(json.loads(x)["event"] == event for x in log.read_text().splitlines() if x.startswith("{"))

    with log.open("w") as err_file:
        p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], stdout=subprocess.DEVNULL, stderr=err_file,
                             text=True)
        try:
            # the pid file is written once the signal handlers are in place
            assert wait_for(lambda: (tmp_path / "state" / "callbackd.pid").exists(), 30)
            cfg.write_text(good + BAD, encoding="utf-8")
            p.send_signal(signal.SIGHUP)
            assert wait_for(lambda: logged("daemon.reload_failed"), 30), log.read_text()
            assert p.poll() is None
            cfg.write_text(good.replace("[schedule]", "[queue]\nlease = '20m'\n\n[schedule]"), encoding="utf-8")
            p.send_signal(signal.SIGHUP)
            assert wait_for(lambda: logged("daemon.reloaded"), 30), log.read_text()
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
    assert p.returncode == 0, log.read_text()
    events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    reload_events = [e for e in events if e["event"].startswith(("daemon.reload", "sms.reload"))]
    assert [e["event"] for e in reload_events] == ["daemon.reload_failed", "daemon.reloaded"], reload_events
    assert "sms.templates" in reload_events[0]["error"] and "recal.fr" in reload_events[0]["error"]
    assert reload_events[1]["changed"] == ["queue"]     # the refused [sms] never took effect
    cfg.write_text(good + BAD, encoding="utf-8")
    r = subprocess.run([*CALLBACKD, "--config", str(cfg), "run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 78, r.stderr
    assert "must contain {link}" in r.stderr
