"""`callbackd doctor` against an AMI server that speaks the wire protocol: login and queue checks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from support.ami_server import AmiTestServer

from daemon.cli import cli


def config(tmp: Path, port: int, secret: str, queue: str | None = None) -> Path:
    (tmp / "queue_log").write_text("")
    dialer = (f'\n[dialer]\nkind = "ami"\n[dialer.ami]\npbx = "north"\nmode = "citizen-first"\n'
              f'agent_exten = "200"\ncontext = "callback_to_agent"\nqueue = "{queue}"\n') if queue else ""
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp / "state"}"\n[store]\nurl = "sqlite:///{tmp / "cb.db"}"\n'
                   f'[http]\nport = 0\n[sources.queue_log]\npath = "{tmp / "queue_log"}"\n'
                   f'[[sources.ami]]\nname = "north"\nport = {port}\nusername = "callbackd"\nsecret = "{secret}"\n'
                   + dialer)
    CliRunner().invoke(cli, ["db", "upgrade", "--config", str(cfg)])
    return cfg


def test_login_and_queue_are_checked(tmp_path: Path):
    with AmiTestServer() as server:
        server.queues["hotline"] = {"LoggedIn": 2, "Available": 1, "Callers": 0}
        r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, server.port, "callbackd-secret",
                                                                      "hotline"))])
        assert "✓ ami north: logged in" in r.output, r.output
        assert "✓ ami north queue: queue 'hotline' exists" in r.output
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, server.port, "callbackd-secret",
                                                                      "nosuchqueue"))])
        assert r.exit_code == 1 and "✗ ami north queue: queue 'nosuchqueue' is not on this PBX" in r.output


def test_a_wrong_secret_says_what_to_fix(tmp_path: Path):
    with AmiTestServer() as server:
        r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, server.port, "wrong"))])
    assert r.exit_code == 1
    assert "✗ ami north:" in r.output and "username and secret" in r.output


def test_nobody_listening(tmp_path: Path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = CliRunner().invoke(cli, ["doctor", "--config", str(config(tmp_path, port, "x"))])
    assert r.exit_code == 1 and f"check that Asterisk listens on 127.0.0.1:{port}" in r.output
