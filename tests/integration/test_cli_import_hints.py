"""`callbackd import` says why a file gave no attempt: a CDR file whose records are in a dcontext the
settings do not call inbound (named with its counts), a CDR file given to `import queue-log`; and its
summary counts with separators and singulars."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CALLBACKD = [str(Path(sys.executable).with_name("callbackd"))]


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "callbackd.toml"
    if not cfg.exists():
        cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[store]\nurl = "sqlite:///{tmp_path}/db"\n'
                       '[detect]\ndefault_region = "CN"\n', encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}
    p = subprocess.run([*CALLBACKD, "--config", str(cfg), *args], capture_output=True, text=True, timeout=120,
                       env={**base, **(env or {})}, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return p


def test_cdr_outside_the_inbound_contexts_says_which_contexts_it_saw(tmp_path: Path, shared: Path) -> None:
    master = shared / "asterisk" / "captures" / "Master.csv"
    run(tmp_path, "db", "upgrade")
    p = run(tmp_path, "import", "cdr", str(master))
    # the capture's hotline answers in its own context, "hotline-did", which the default does not list
    assert p.stdout.strip().endswith("57 lines, 0 attempts, 0 dead letters, 0 callbacks opened, 0 cancelled")
    assert "no record is an inbound hotline call" in p.stderr
    assert "hotline-did (19)" in p.stderr and "inbound_contexts is ['from-pstn'" in p.stderr
    # told what to do, and doing it works: no hint then
    with (tmp_path / "callbackd.toml").open("a") as f:
        f.write(f'[sources.cdr]\npath = "{master}"\ninbound_contexts = ["hotline-did"]\n')
    p = run(tmp_path, "import", "cdr", str(master))
    assert "19 attempts" in p.stdout and p.stderr == ""


def test_a_cdr_file_given_to_import_queue_log(tmp_path: Path, shared: Path) -> None:
    run(tmp_path, "db", "upgrade")
    p = run(tmp_path, "import", "queue-log", str(shared / "asterisk" / "captures" / "Master.csv"))
    assert "0 attempts, 57 dead letters" in p.stdout
    assert "this looks like a CDR CSV file, not a queue_log: `callbackd import cdr FILE`" in p.stderr


def test_summary_counts_have_separators_and_singulars(tmp_path: Path) -> None:
    qlog = tmp_path / "queue_log"
    lines = []
    start = int(time.time()) - 1200 * 60      # the last 20 hours: inside the 24-hour lookback
    for i in range(1200):      # 1,200 calls, each one ENTERQUEUE and one closing line; one caller fails 3 times
        t = start + i * 60
        caller = "13900139000" if i < 3 else f"1380013{i:04d}"
        verb = "ABANDON|1|1|30" if i < 3 else "CONNECT|30|1780000000.9|1"
        lines += [f"{t}|{t}.{i}|hotline|NONE|ENTERQUEUE||{caller}|1", f"{t + 30}|{t}.{i}|hotline|Agent/1|{verb}"]
    qlog.write_text("\n".join(lines) + "\n")
    run(tmp_path, "db", "upgrade")
    p = run(tmp_path, "import", "queue-log", str(qlog))
    assert p.stdout.strip() == f"{qlog}: 2,400 lines, 1,200 attempts, 0 dead letters, 1 callback opened, 0 cancelled"
    assert p.stderr == ""
