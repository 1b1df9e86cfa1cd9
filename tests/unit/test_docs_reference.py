"""docs/reference.md is generated from the CLI and the config model; it must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_reference.py"), "--check"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr + "\n(run: .venv/bin/python tools/gen_reference.py)"


def test_every_command_and_section_is_in_it():
    text = (ROOT / "docs" / "reference.md").read_text()
    for heading in ("### `callbackd callbacks claim`", "### `callbackd import queue-log`", "### `callbackd doctor`",
                    "### `callbackd schedule preview`", "### `[detect]`", "### `[schedule]`", "### `[store]`"):
        assert heading in text, heading
