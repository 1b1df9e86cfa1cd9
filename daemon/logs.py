"""structlog set up once: JSON lines when not on a terminal, readable on one; numbers masked.

Event names are stable (`source.batch`, `callback.opened`, ...); context is bound
through contextvars. Phone numbers are masked at INFO and above (DESIGN
invariant 10), whatever key they are logged under.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

# structlog picks up rich (and through it pygments) at import when it is installed, for pretty console
# tracebacks: about 2 MiB the daemon never uses when it writes JSON to a pipe or journald. Off a terminal
# rich is hidden from that one import (structlog falls back to plain tracebacks) and stays importable for
# everything else (the CLI's tables).
_HIDE_RICH = not ("structlog" in sys.modules or "rich" in sys.modules or sys.stderr is None or sys.stderr.isatty())
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

from callback_queue.numbers import mask  # noqa: E402

_NUMBER_KEYS = frozenset({"number", "caller", "to", "from_", "citizen"})
_E164 = re.compile(r"\+\d{7,15}")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _mask_numbers(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if method == "debug":
        return event
    for key, value in list(event.items()):
        if key in _NUMBER_KEYS and isinstance(value, str):
            event[key] = mask(value)
        elif isinstance(value, str) and "+" in value:
            event[key] = _E164.sub(lambda m: mask(m.group(0)), value)
    return event


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_numbers,
            structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # third-party libraries (APScheduler, alembic, uvicorn) log through the standard library: their
    # records go through structlog too, so every line has the same form (one JSON object under
    # journald) and lines from two threads never interleave on one line
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_ToStructlog())
    root.setLevel(max(_LEVELS[level], logging.WARNING))


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            event = record.getMessage()
            kw: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                kw["exc_info"] = record.exc_info
            log.log(record.levelno, event, **kw)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
