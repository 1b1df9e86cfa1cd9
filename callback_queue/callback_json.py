"""Callbacks as the API's JSON, written by PostgreSQL.

The API's list and claim answer with `Callback.as_json` dicts encoded by Starlette's JSONResponse. On
PostgreSQL the database writes those very bytes instead, in the statement that picks the rows: one text
column fetched rather than 50 rows of 29 columns turned into records, dicts and JSON in Python (most of
the server's CPU per request). The document is the same byte for byte:

- keys in `Callback`'s field order, compact separators (`,` and `:`), non-ASCII written as UTF-8;
- strings escaped as json.dumps escapes them (`"`, `\\`, `\\b \\f \\n \\r \\t`, other control characters as
  `\\u00XX`): PostgreSQL's to_json does the same;
- times in UTC as ISO 8601 with a `Z`, microseconds only when there are any (`isoformat()`);
- the number masked (`numbers.mask`) unless the viewer may see it;
- `outcome_counts`, stored as json.dumps of a flat object (`apply_outcome`), re-written compact in its
  stored order; NULL stays null and '' stays "" (as `Callback.from_row` leaves them).

SQLite keeps the Python path (`items_json`). tests/integration/test_callback_json.py holds the two paths to
the same bytes over the same rows (NULLs, non-ASCII and control characters, every state, masked and shown
numbers, microseconds or none).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from .callbacks import _CALLBACK_FIELDS, _CALLBACK_TIMES, Callback

_INTS = frozenset({"id", "priority", "failures", "dial_attempts"})
#: isoformat() of a UTC time: microseconds dropped when zero (the format has no other '.')
_ISO = "replace(to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '')"
#: numbers.mask: "-" for none, all stars up to 6 characters; from 12: up to 6 kept, stars (at least 4), the
#: last 4; 7 to 11: what is left of 6, 4 stars, the last 2
_MASK = ("CASE WHEN coalesce({c}, '') = '' THEN '-' WHEN length({c}) <= 6 THEN repeat('*', length({c})) "
         "WHEN length({c}) >= 12 THEN left({c}, least(6, length({c}) - 8)) "
         "|| repeat('*', length({c}) - least(6, length({c}) - 8) - 4) || right({c}, 4) "
         "ELSE left({c}, length({c}) - 6) || '****' || right({c}, 2) END")
#: a stored flat JSON object re-written compact, in its stored order
_COUNTS = ("CASE WHEN {c} IS NULL THEN 'null' WHEN {c} = '' THEN '\"\"' ELSE coalesce((SELECT '{{' || "
           "string_agg(to_json(e.key)::text || ':' || CASE json_typeof(e.value) WHEN 'string' THEN "
           "to_json(e.value #>> '{{}}')::text ELSE e.value::text END, ',' ORDER BY e.n) || '}}' "
           "FROM json_each({c}::json) WITH ORDINALITY AS e(key, value, n)), '{{}}') END")


def callback_json(ref: str, show_number: sa.ColumnElement[bool]) -> sa.ColumnElement[str]:
    """SQL for one callback's JSON text. `ref` names the table, subquery or CTE whose columns are the
    callbacks table's; the number is shown in full where `show_number` holds, masked elsewhere."""
    pieces: list[sa.ColumnElement[Any]] = []
    for i, name in enumerate(_CALLBACK_FIELDS):
        c = f"{ref}.{name}"
        key = f"'{'{' if i == 0 else ','}\"{name}\":'"
        if name == "number":
            pieces.append(sa.literal_column(key))
            pieces.append(sa.cast(sa.func.to_json(sa.case((show_number, sa.literal_column(c)),
                                                          else_=sa.literal_column(_MASK.format(c=c)))), sa.Text))
            continue
        if name in _INTS:
            value = f"coalesce({c}::text, 'null')"
        elif name in _CALLBACK_TIMES:
            value = f"coalesce('\"' || {_ISO.format(c=c)} || 'Z\"', 'null')"
        elif name == "outcome_counts":
            value = _COUNTS.format(c=c)
        else:
            value = f"coalesce(to_json({c})::text, 'null')"
        pieces.append(sa.literal_column(f"{key} || {value}"))
    pieces.append(sa.literal_column("'}'"))
    return sa.func.concat(*pieces, type_=sa.Text)


def dumps(value: Any) -> str:
    """JSON as Starlette's JSONResponse writes it (what the SQL is held to)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


def items_json(callbacks: Iterable[Callback], show_number: Callable[[Callback], bool]) -> str:
    """The Python path: the callbacks' JSON objects, comma-separated (a JSON array's inside)."""
    return ",".join(dumps(c.as_json(show_number=show_number(c))) for c in callbacks)
