"""[retry.rules] given in part overrides the defaults per outcome; the others keep theirs; times = 0 is
"never retry this outcome"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callback_queue.retry import DialOutcome, GiveUp, Retry
from daemon.app import retry_policy
from daemon.settings import load_settings

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _settings(tmp_path: Path, rules: str):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[retry.rules]\n{rules}", encoding="utf-8")
    return load_settings(cfg, env={})


def test_a_partial_table_keeps_the_other_defaults(tmp_path: Path) -> None:
    s = _settings(tmp_path, 'busy = { delay = "20m", times = 4 }\nno-answer = { delay = "1h", times = 1 }\n')
    r = s.retry.rules
    assert sorted(r) == ["busy", "congestion", "failed", "no-answer"]
    assert (r["busy"].delay, r["busy"].times) == (timedelta(minutes=20), 4)
    assert (r["no-answer"].delay, r["no-answer"].times) == (timedelta(hours=1), 1)
    assert (r["congestion"].delay, r["congestion"].times) == (timedelta(minutes=5), 3)
    assert (r["failed"].delay, r["failed"].times) == (timedelta(minutes=15), 1)
    # the congestion the walkthrough saw go straight to SMS is retried again
    d = retry_policy(s).decide("congestion", attempts=1, counts={"congestion": 1}, now=NOW)
    assert d == Retry(NOW + timedelta(minutes=5))


def test_a_rule_given_in_part_keeps_its_default_other_key(tmp_path: Path) -> None:
    r = _settings(tmp_path, "busy = { times = 5 }\n").retry.rules
    assert (r["busy"].delay, r["busy"].times) == (timedelta(minutes=10), 5)


def test_times_zero_never_retries(tmp_path: Path) -> None:
    s = _settings(tmp_path, "failed = { times = 0 }\n")
    d = retry_policy(s).decide(DialOutcome.FAILED, attempts=1, counts={"failed": 1}, now=NOW)
    assert d == GiveUp("unreachable", "failed: not retried")
    assert isinstance(retry_policy(s).decide("busy", attempts=1, counts={"busy": 1}, now=NOW), Retry)


def test_environment_overrides_one_outcome(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("", encoding="utf-8")
    s = load_settings(cfg, env={"CALLBACKD_RETRY__RULES__NO-ANSWER": "{ times = 0 }"})
    assert s.retry.rules["no-answer"].times == 0 and s.retry.rules["busy"].times == 3


def test_unknown_outcomes_and_bad_keys_still_refused(tmp_path: Path) -> None:
    from callback_queue.errors import ConfigError

    with pytest.raises(ConfigError, match="not \\['ringing'\\]"):
        _settings(tmp_path, 'ringing = { delay = "1m", times = 1 }\n')
    with pytest.raises(ConfigError, match="retry.rules.busy.dela: unknown setting"):
        _settings(tmp_path, 'busy = { dela = "1m" }\n')
