"""Secrets come from systemd credentials ($CREDENTIALS_DIRECTORY), never shown in `config check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.settings import load_settings


def test_store_url_from_a_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "store_url").write_text("postgresql+psycopg://callbackd:s3cret@db.internal/callbackd\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[daemon]\ntimezone = 'UTC'\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(cfg, env={})
    assert s.store_url == "postgresql+psycopg://callbackd:s3cret@db.internal/callbackd"
    assert "s3cret" not in str(s.redacted())
    # a URL in the file (or the environment) wins over the credential
    cfg.write_text("[store]\nurl = 'sqlite:////tmp/x.db'\n")
    assert load_settings(cfg, env={}).store_url == "sqlite:////tmp/x.db"
