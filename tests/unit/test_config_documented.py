"""config/callbackd.toml is the documented default: every section and key of the settings model is in it
(a commented-out key counts), each with a comment and its default value (or, when it has none, an example
the model accepts), and the file loads as the effective default."""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, TypeAdapter

from daemon.ami.settings import AmiDialerSettings
from daemon.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "callbackd.toml"
#: sections that are not fields of Settings: [dialer] keeps [dialer.ami] as an extra key, its module validates it
EXTRA_SECTIONS: dict[str, type[BaseModel]] = {"dialer.ami": AmiDialerSettings}

HEADER = re.compile(r"^(?:#\s*)?\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(?:#.*)?$")
KEY = re.compile(r'^(#\s*)?("[^"]+"|[A-Za-z0-9_\-]+)\s*=\s*(.*)$')


def _models(ann: Any) -> list[type[BaseModel]]:
    args = [ann, *typing.get_args(ann)]
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def sections(model: type[BaseModel] = Settings, prefix: str = "") -> dict[str, type[BaseModel]]:
    """Section name -> its model, for every table of the settings (nested ones included)."""
    out: dict[str, type[BaseModel]] = {prefix: model} if prefix else {}
    for name, field in model.model_fields.items():
        inner = _models(field.annotation)
        if field.exclude or not inner or typing.get_origin(field.annotation) is dict:
            continue  # plain values, and tables of entries ([retry.rules]) are keys of their section
        out.update(sections(inner[0], f"{prefix}.{name}" if prefix else name))
    return out


def all_sections() -> dict[str, type[BaseModel]]:
    return {**sections(), **EXTRA_SECTIONS}


def documented() -> dict[str, dict[str, tuple[int, str]]]:
    """Section -> key -> (line number, the key's text up to its value's end), commented-out ones included."""
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    found: dict[str, dict[str, tuple[int, str]]] = {}
    section = ""
    for i, line in enumerate(lines):
        if m := HEADER.match(line):
            section = m.group(1)
            found.setdefault(section, {})
            continue
        m = KEY.match(line)
        if not m or not section:
            continue
        key = m.group(2).strip('"')
        text = m.group(3)
        # a value may go on over the next (commented) lines: take them until it is one TOML value
        for extra in lines[i + 1 : i + 6]:
            try:
                tomllib.loads(f"v = {text}")
                break
            except tomllib.TOMLDecodeError:
                text += "\n" + extra.lstrip("#")
        found[section][key] = (i + 1, text)
    return found


def value_of(text: str) -> Any:
    return tomllib.loads(f"v = {text}")["v"]


def adapter(field: Any) -> TypeAdapter[Any]:
    ann = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(ann)


def test_every_section_and_key_is_documented() -> None:
    doc = documented()
    missing = []
    for section, model in all_sections().items():
        keys = [n for n, f in model.model_fields.items() if not f.exclude and f"{section}.{n}" not in all_sections()]
        if not keys:
            continue  # [sources]: only tables of its own
        if section not in doc:
            missing.append(f"[{section}]")
            continue
        missing += [f"{section}.{n}" for n in keys if n not in doc[section] and f"{section}.{n}" not in doc]
    assert not missing, f"config/callbackd.toml does not document {', '.join(missing)}"


def test_no_key_that_does_not_exist() -> None:
    known = all_sections()
    doc = documented()
    dict_sections = {f"{s}.{n}" for s, m in known.items() for n, f in m.model_fields.items()
                     if typing.get_origin(f.annotation) is dict and _models(f.annotation)}
    stale = [f"[{s}]" for s in doc if s not in known and s not in dict_sections]
    stale += [f"{s}.{k}" for s, keys in doc.items() if s in known for k in keys if k not in known[s].model_fields]
    assert not stale, f"config/callbackd.toml documents settings that do not exist: {', '.join(stale)}"


def test_every_key_has_a_comment_and_shows_its_default() -> None:
    known = all_sections()
    wrong = []
    for section, keys in documented().items():
        if section not in known:
            continue
        for key, (line, text) in keys.items():
            field = known[section].model_fields.get(key)
            if field is None:
                continue  # test_no_key_that_does_not_exist names it
            if not re.search(r"\s#\s", text):
                wrong.append(f"line {line}: {section}.{key} has no comment")
            value = adapter(field).validate_python(value_of(text))   # an example must be accepted too
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            if default is not None and value != default:
                wrong.append(f"line {line}: {section}.{key} shows {value_of(text)!r}; the default is {default!r}")
    assert not wrong, "\n".join(wrong)


def test_tables_of_entries_show_their_defaults() -> None:
    # [retry.rules]: one inline table per outcome, together the default
    doc = documented()
    for section, model in all_sections().items():
        for name, field in model.model_fields.items():
            if typing.get_origin(field.annotation) is not dict or not _models(field.annotation):
                continue
            entries = doc.get(f"{section}.{name}")
            assert entries, f"[{section}.{name}] is not documented"
            shown = adapter(field).validate_python({k: value_of(text) for k, (_, text) in entries.items()})
            assert shown == field.get_default(call_default_factory=True), f"[{section}.{name}]"


def test_it_loads_as_the_default() -> None:
    loaded = load_settings(CONFIG, env={})
    default = Settings()
    for name in Settings.model_fields:
        if name not in ("sources", "origin"):
            assert getattr(loaded, name) == getattr(default, name), name
    # the sources it sets: the stock Asterisk log files; no AMI, no planning until [schedule] is uncommented
    assert loaded.sources.queue_log is not None and str(loaded.sources.queue_log.path) == "/var/log/asterisk/queue_log"
    assert loaded.sources.cdr is not None and loaded.sources.cdr.layout == "auto"
    assert loaded.sources.ami == [] and loaded.schedule is None and loaded.dialer.kind == "manual"


@pytest.mark.parametrize("key", ["workday", "quiet_hours"])
def test_window_examples_exist(key: str) -> None:
    # the demo's configuration points here for real off-peak windows
    assert key in documented()["schedule"]
