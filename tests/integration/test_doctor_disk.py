"""`callbackd doctor` checks the free space where the daemon writes (state dir, SQLite file): a full tmpfs
made every ingest fail with "database or disk is full" while doctor said all good."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from daemon import doctor
from daemon.cli import cli

MIB = 1024 * 1024


pytestmark = pytest.mark.usefixtures("clean_cli_env")


def _disk(monkeypatch: pytest.MonkeyPatch, free: int, total: int) -> list[Path]:
    asked: list[Path] = []

    def statvfs(path: Path) -> SimpleNamespace:
        asked.append(Path(path))
        return SimpleNamespace(f_bavail=free // 4096, f_frsize=4096, f_blocks=total // 4096)

    monkeypatch.setattr(doctor, "_statvfs", statvfs)
    return asked


def _doctor(tmp_path: Path, db: Path) -> str:
    from callback_queue.store import Store

    url = f"sqlite:///{db}"
    Store(url).upgrade()
    qlog = tmp_path / "queue_log"
    qlog.write_text("")
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[store]\nurl = "{url}"\n'
                   f'[http]\nport = 0\n[sources.queue_log]\npath = "{qlog}"\n')
    r = CliRunner().invoke(cli, ["doctor", "--config", str(cfg)])
    return r.output + f"\nexit {r.exit_code}"


def test_a_nearly_full_disk_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _disk(monkeypatch, free=2 * MIB, total=64 * MIB)
    out = _doctor(tmp_path, tmp_path / "callbackd.db")
    assert "✗ disk space:" in out and "2 MiB free of 64 MiB" in out and "database or disk is full" in out
    assert out.endswith("exit 1")
    assert asked == [tmp_path]  # the state dir is not created yet: its filesystem (the same as the file's) once


def test_little_space_left_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk(monkeypatch, free=50 * MIB, total=100 * 1024 * MIB)
    out = _doctor(tmp_path, tmp_path / "callbackd.db")
    assert "disk space:" in out and "50 MiB free of 100.0 GiB: below 100 MiB or 5%" in out
    assert "✗ disk space" not in out and out.endswith("exit 0")
    again = tmp_path / "again"
    again.mkdir()
    _disk(monkeypatch, free=4 * 1024 * MIB, total=100 * 1024 * MIB)  # 4% of a big disk
    assert "4.0 GiB free of 100.0 GiB: below 100 MiB or 5%" in _doctor(again, again / "callbackd.db")


def test_enough_space_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk(monkeypatch, free=20 * 1024 * MIB, total=100 * 1024 * MIB)
    out = _doctor(tmp_path, tmp_path / "callbackd.db")
    assert "✓ disk space:" in out and "20.0 GiB free of 100.0 GiB" in out and out.endswith("exit 0")
