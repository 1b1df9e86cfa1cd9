"""The embedded default: messages are appended as JSON lines to a file (or written to stderr)."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from ..errors import ReconcileError
from .base import OutgoingSms, SendResult


class ConsoleSender:
    """Writes each message as one JSON line; `find_sent` reads the file back (reconciliation)."""

    name = "console"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    def send(self, msg: OutgoingSms) -> SendResult:
        pid = f"console-{msg.ref}"
        line = json.dumps({"id": pid, "ref": msg.ref, "to": msg.to, "body": msg.body, "kind": msg.kind,
                           "lang": msg.lang, "at": datetime.now(UTC).isoformat()}, ensure_ascii=False)
        with self._lock:
            if self.path is None:
                print(line, file=sys.stderr, flush=True)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        return SendResult(pid, "written")

    def find_sent(self, msg: OutgoingSms) -> SendResult | None:
        if self.path is None:
            raise ReconcileError("the console sender writes to stderr: cannot tell whether it was sent")
        for m in self.messages():
            if m.get("ref") == msg.ref:
                return SendResult(m["id"], "written")
        return None

    def messages(self) -> list[dict[str, object]]:
        if self.path is None or not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
