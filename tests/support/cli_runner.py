"""The CLI run in-process (click's CliRunner) against a config file, as a test's fixture hands it out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result


def in_process_cli(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`run(*args)`: `callbackd *args --config cfg` in this process; the stores each run opens are disposed
    after it (their pools would otherwise hold database connections for the rest of the session)."""
    import daemon.app
    from daemon.cli import cli

    opened: list[Any] = []
    real = daemon.app.open_store

    def recording(settings: Any) -> Any:
        s = real(settings)
        opened.append(s)
        return s

    monkeypatch.setattr(daemon.app, "open_store", recording)

    def run(*args: str) -> Result:
        try:
            return CliRunner().invoke(cli, [*args, "--config", str(cfg)], catch_exceptions=False)
        finally:
            while opened:
                opened.pop().dispose()

    return run


def ok(r: Result) -> Result:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r
