"""The console's banners and error pages' way back: texts fixed here, chosen by codes in the URL.

A redirect names a message by code (`/console/?notice=closed&id=5&state=reached`), never by text: a link
someone sends cannot put words of its own in the console's green or red banners. Only a callback id and a
state name come from the URL, each checked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from callback_queue.callbacks import State
from callback_queue.errors import InvalidTransition, LeaseLost, NotFound, StoreError

from .api_schema import MAX_ID

#: the banners a redirect may ask for: code -> text ({id}: the `id` parameter, {state}: the `state` parameter)
NOTICES = {
    "nothing_due": "Nothing is due right now.",
    "closed": "Callback {id}: {state}.",
    "released": "Callback {id} is back in the queue.",
    "cancelled": "Callback {id} cancelled.",
}
ERRORS = {
    "login": "Unknown user name or token.",
    "reason": "Say why the callback is cancelled.",
    "outcome": "Choose how the call ended.",
    "not_found": "There is no callback {id}.",
    "lease_lost": "Callback {id} is claimed by someone else, or your claim on it has expired.",
    "not_allowed": "Callback {id} cannot be changed that way in its current state.",
    "store": "The database cannot be used right now: try again in a moment.",
    "failed": "That did not work; the daemon's log says why.",
}


def message(table: Mapping[str, str], query: Mapping[str, str], key: str) -> str | None:
    """The fixed text that the redirect's `key` (notice, error) names, or None: an unknown code, or a
    parameter missing or not what it should be (nothing from the URL but a callback id and a state name
    reaches the page)."""
    text = table.get(query.get(key) or "")
    if text is None:
        return None
    params: dict[str, Any] = {}
    if "{id}" in text:
        raw = query.get("id") or ""
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_ID):
            return None
        params["id"] = int(raw)
    if "{state}" in text:
        try:
            params["state"] = State(query.get("state") or "").value.replace("_", " ")
        except ValueError:
            return None
    return text.format(**params)


def back_to(path: str) -> tuple[str, str]:
    """Where an error page's "Back" link goes: the page the user was on (or sent the form from)."""
    if path.startswith("/console/reports"):
        return "/console/reports", "Back to the reports"
    if path.startswith("/console/admin"):
        return "/console/admin", "Back to the heatmap & SLA"
    m = re.match(r"/console/callbacks/(\d{1,18})(/|$)", path)
    if m and path != m.group(0) and 1 <= int(m.group(1)) <= MAX_ID:  # a form sent from a callback's page
        return f"/console/callbacks/{int(m.group(1))}", f"Back to callback {int(m.group(1))}"
    return "/console/", "Back to the due list"


def error_code(exc: Exception) -> str:
    for cls, code in ((NotFound, "not_found"), (LeaseLost, "lease_lost"), (InvalidTransition, "not_allowed"),
                      (StoreError, "store")):
        if isinstance(exc, cls):
            return code
    return "outcome" if isinstance(exc, ValueError) else "failed"  # CloseOutcome("...") is the only ValueError
