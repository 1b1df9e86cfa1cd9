"""Write docs/reference.md from the CLI's own --help and the configuration model.

    .venv/bin/python tools/gen_reference.py          # rewrite docs/reference.md
    .venv/bin/python tools/gen_reference.py --check  # exit 1 if it is out of date (CI runs this)
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "reference.md"


def commands(group: click.Group, prefix: list[str]) -> list[tuple[list[str], click.Command]]:
    out: list[tuple[list[str], click.Command]] = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        path = [*prefix, name]
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            out.extend(commands(cmd, path))
    return out


def help_text(path: list[str], cmd: click.Command) -> str:
    from daemon.cli import cli

    ctx = click.Context(cli, info_name="callbackd", terminal_width=100, max_content_width=100)
    for name in path:
        parent = ctx
        ctx = click.Context(parent.command.commands[name], info_name=name, parent=parent,  # type: ignore[attr-defined]
                            terminal_width=100, max_content_width=100)
    return cmd.get_help(ctx)


def type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return type_name(typing.get_args(t)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(type_name(a) for a in typing.get_args(t))
    if origin is typing.Literal:
        return " or ".join(f'"{a}"' for a in typing.get_args(t))
    if origin in (list, tuple):
        return f"list of {type_name(typing.get_args(t)[0])}"
    if origin is dict:
        k, v = typing.get_args(t)
        return f"table of {type_name(v)}"
    if t is type(None):
        return "none"
    return {"timedelta": "duration", "SecretStr": "secret", "Path": "path", "str": "string", "int": "integer",
            "bool": "boolean", "float": "number"}.get(getattr(t, "__name__", str(t)), getattr(t, "__name__", str(t)))


def default(field: Any) -> str:
    from daemon.settings import format_duration

    if field.is_required():
        return "(required)"
    v = field.get_default(call_default_factory=True)
    if isinstance(v, BaseModel):
        return "(table)"
    if hasattr(v, "total_seconds"):
        return f'"{format_duration(v)}"'
    if hasattr(v, "get_secret_value"):
        return "(secret)"
    if v is None:
        return "(not set)"
    if isinstance(v, Path):
        return f'"{v}"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {default_value(x)}" for k, x in v.items()) + "}"
    return repr(v).replace("'", '"') if not isinstance(v, bool) else str(v).lower()


def default_value(v: Any) -> str:
    from daemon.settings import format_duration

    if isinstance(v, BaseModel):
        return "{ " + ", ".join(f"{k} = {default_value(x)}" for k, x in v.model_dump().items()) + " }"
    if hasattr(v, "total_seconds"):
        return f'"{format_duration(v)}"'
    return repr(v)


def model_rows(model: type[BaseModel], section: str) -> list[str]:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        inner = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            inner = [ann]
        if inner:
            sub = f"{section}.{name}" if section else name
            if typing.get_origin(ann) is list:
                sub = f"[{sub}]"
            elif typing.get_origin(ann) is dict:
                sub = f"{sub}.<name>"
                desc = (field.description or "").replace("|", "\\|")
                rows.append(f"| `{name}` | {type_name(ann)} | `{default(field)}` | {desc} |")
            nested.append((sub, inner[0]))
            continue
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {type_name(ann).replace('|', chr(92) + '|')} | `{default(field)}` | {desc} |")
    out: list[str] = []
    if rows:
        out += [f"### `[{section}]`", ""]
        if model.__doc__ and model.__doc__.strip() and not model.__doc__.startswith(model.__name__ + "("):
            out += [model.__doc__.strip().splitlines()[0], ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for sub, m in nested:
        out += model_rows(m, sub)
    return out


def render() -> str:
    from daemon.app import load_features
    from daemon.cli import cli
    from daemon.settings import Settings

    load_features()
    parts = ["# callbackd reference", "",
             "Generated by `tools/gen_reference.py` from the command line's own `--help` and the configuration "
             "model; CI fails when it is out of date. Do not edit by hand.", "", "## Commands", ""]
    top = cli.get_help(click.Context(cli, info_name="callbackd", terminal_width=100, max_content_width=100))
    parts += ["### `callbackd`", "", "```", top, "```", ""]
    for path, cmd in commands(cli, []):
        parts += [f"### `callbackd {' '.join(path)}`", "", "```", help_text(path, cmd), "```", ""]
    parts += ["## Configuration", "",
              "One TOML file (`--config`, `$CALLBACKD_CONFIG`, `/etc/callbackd/callbackd.toml`, "
              "`./config/callbackd.toml`); every key can be overridden with `CALLBACKD_<SECTION>__<KEY>`. "
              "Durations are written like `\"90s\"`, `\"15m\"`, `\"1h30m\"`, `\"24h\"`. "
              "`callbackd config check` prints the effective values.", ""]
    parts += model_rows(Settings, "")
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run `python tools/gen_reference.py`", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
