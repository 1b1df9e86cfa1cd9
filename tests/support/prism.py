"""Prism serving the test copy of Twilio's OpenAPI spec (tools/make_test_spec.py: it can answer
429/500/503 on request), for every test that talks to "Twilio"."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRISM_DIR = ROOT / "tools" / "prism"
PRISM = PRISM_DIR / "node_modules" / ".bin" / "prism"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def prism(tmp: Path) -> Iterator[str]:
    """Prism on a free port (the spec derived into `tmp`); yields its base URL, stops it afterwards."""
    from tests.conftest import shared_dir

    if not PRISM.exists():   # a fresh clone: install the pinned Prism from package-lock.json
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=PRISM_DIR, check=True)
    spec = Path(os.environ.get("TWILIO_OAI_SPEC", shared_dir() / "twilio" / "twilio_api_v2010.json"))
    test_spec = tmp / "twilio_api_v2010.test.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_test_spec.py"), str(spec), str(test_spec)],
                   check=True)
    port = free_port()
    proc = subprocess.Popen([str(PRISM), "mock", str(test_spec), "-h", "127.0.0.1", "-p", str(port), "-v", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Prism did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
