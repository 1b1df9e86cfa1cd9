"""Property tests of the config loader: whatever the file and the environment hold, load_settings
returns Settings or raises ConfigError naming the field at fault — never another exception."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from callback_queue.errors import ConfigError
from daemon.settings import Settings, load_settings


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _schema(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel] | None]:
    """dotted name -> model (tables) or None (values), for every known setting."""
    out: dict[str, type[BaseModel] | None] = {}
    for name, f in model.model_fields.items():
        if name == "origin" and not prefix:
            continue
        sub = _model_of(f.annotation)
        out[prefix + name] = sub
        if sub is not None:
            out.update(_schema(sub, prefix + name + "."))
    return out


SCHEMA = _schema(Settings)
TABLES = [k for k, v in SCHEMA.items() if v is not None]
VALUES = [k for k, v in SCHEMA.items() if v is None]

text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
durationish = st.from_regex(r"\A-?[0-9]{1,20}(\.[0-9]{1,3})?(ms|s|m|h|d|w|x|)\Z")
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False), st.booleans(), text,
    durationish, st.sampled_from(["24h", "CN", "sqlite:///x.db", "postgresql://u@h/db", "Asia/Shanghai",
                                  "Mars/Olympus", "", "00:00-24:00", "25:00-26:00", "beginning", "end", "json"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.sampled_from(["a", "times", "delay"]),
                                                                        inner, max_size=2)), max_leaves=6)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else ("inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(data: dict[str, Any]) -> str:
    """Dotted keys at the top level: `detect.threshold = 3` (TOML allows it, and tables nest by it)."""
    return "\n".join(".".join(json.dumps(p) for p in k.split(".")) + f" = {_toml_value(v)}"
                     for k, v in data.items()) + "\n"


def _consistent(keys: list[str]) -> list[str]:
    """Drop keys that would define a value and a table at once (not valid TOML, not our concern)."""
    out: list[str] = []
    for k in keys:
        if any(k.startswith(o + ".") or o.startswith(k + ".") or o == k for o in out):
            continue
        out.append(k)
    return out


keys = st.one_of(st.sampled_from(VALUES), st.sampled_from(TABLES).map(lambda t: t + ".bogus"),
                 st.sampled_from(["bogus", "detect.threshold.deeper", "sources.queue_log.path"]))
configs = st.lists(st.tuples(keys, values), max_size=6).map(
    lambda kv: {k: dict(kv)[k] for k in _consistent([k for k, _ in kv])})
env_keys = st.one_of(
    st.sampled_from(VALUES).map(lambda k: "CALLBACKD_" + "__".join(p.upper() for p in k.split("."))),
    st.from_regex(r"\ACALLBACKD_[A-Z_]{0,12}__[A-Z_]{0,12}\Z"),
)
envs = st.dictionaries(env_keys, st.one_of(text, durationish, st.sampled_from(["1", "true", "[1,2]", "{a=1}", "inf",
                                                                                 "nan", "1979-05-27", '"24h"'])),
                       max_size=3)


def _check(path: Path, env: dict[str, str], named: list[str]) -> None:
    try:
        s = load_settings(path, env=env)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.strip(), "a ConfigError without a message"
        names = {n for k in named for n in (k, k.split(".")[0], k.rsplit(".", 1)[-1])}
        assert any(n.lower() in msg.lower() for n in names), f"message names no field given: {msg!r} ({named})"
    else:
        assert isinstance(s, Settings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=configs, env=envs)
@example(data={"detect.lookback": 2**63 - 1}, env={})  # was an OverflowError out of timedelta
@example(data={}, env={"CALLBACKD_DETECT__LOOKBACK": '"99999999999d"'})
@example(data={"detect.threshold": 3}, env={"CALLBACKD_DETECT__THRESHOLD__X": "1"})
def test_any_config_and_environment_give_settings_or_a_config_error_naming_a_field(tmp_path: Path, data, env):
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(to_toml(data), encoding="utf-8")
    env_names = [k.removeprefix("CALLBACKD_").replace("__", ".").lower() for k in env]
    _check(cfg, env, [*data, *env_names, *env])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_the_file_give_settings_or_a_config_error(tmp_path: Path, raw: bytes):
    cfg = tmp_path / "callbackd.toml"
    cfg.write_bytes(raw)
    try:
        assert isinstance(load_settings(cfg, env={}), Settings)
    except ConfigError as exc:
        assert str(cfg) in str(exc) or "invalid configuration" in str(exc)


@pytest.mark.parametrize("key", ["detect.threshold", "retry.max_attempts", "queue.lease", "detect.default_region"])
def test_a_wrong_value_is_reported_against_its_field(tmp_path: Path, key: str):
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(to_toml({key: "not-a-valid-value-at-all"}))
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert key in str(info.value)


def test_the_schema_walk_found_the_settings():
    # the property above is only as good as the keys it tries
    assert {"detect.threshold", "detect.lookback", "store.url", "sources.queue_log.path"} <= set(VALUES)
    assert "sources.queue_log" in TABLES and len(VALUES) > 40
    assert isinstance(SCHEMA, dict) and not isinstance(SCHEMA, types.MappingProxyType)
