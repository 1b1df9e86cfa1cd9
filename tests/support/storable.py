"""Does an attempt fit the attempts table? PostgreSQL enforces column widths and integer ranges, so an
attempt that does not fit fails its whole batch - and the same batch again at every retry."""

from __future__ import annotations

from callback_queue.attempts import Attempt

INT32, INT64 = 2**31 - 1, 2**63 - 1


def unstorable(a: Attempt) -> list[str]:
    """What in `a` would not fit callback_queue/schema.py's attempts table (empty: it fits).

    caller and queue are cut to their width when stored (ingest._fit); the rest must fit as is.
    """
    bad = []
    for name in ("started_ts", "ended_ts"):
        v = getattr(a, name)
        if v is not None and not (isinstance(v, int) and -INT64 - 1 <= v <= INT64):
            bad.append(f"{name}={v!r}")
    w = a.wait_seconds
    if w is not None and not (isinstance(w, int) and -INT32 - 1 <= w <= INT32):
        bad.append(f"wait_seconds={w!r}")
    if not a.call_id or len(a.call_id) > 128:
        bad.append(f"call_id of {len(a.call_id)} characters")
    if a.number is not None and len(a.number) > 20:
        bad.append(f"number={a.number!r}")
    if len(a.reason) > 24 or len(a.system) > 64:
        bad.append(f"reason={a.reason!r} system={a.system!r}")
    return bad
