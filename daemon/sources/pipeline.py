"""Lines → parser → ingest: the backfill import and the live tail share this.

A tail batch commits its attempts, dead letters and file position in one
transaction. If the transaction fails, the tail and the parser's in-queue
state are rewound to what was committed, so the same lines are read again.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callback_queue.attempts import Attempt, DeadLetter
from callback_queue.ingest import CursorWrite, Ingestor, IngestResult, load_cursor

from .tail import FileTail, TailPosition


@dataclass(slots=True)
class Stats:
    lines: int = 0
    attempts: int = 0
    dead_letters: int = 0
    opened: int = 0
    cancelled: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, r: IngestResult) -> None:
        self.opened += len(r.opened)
        self.cancelled += len(r.cancelled)


def parse_lines(parser: Any, lines: list[bytes], positions: Callable[[], list[str]]
                ) -> tuple[list[Attempt], list[DeadLetter]]:
    """Feed lines to a parser; dead letters get "<path>:<byte offset>" as their position.

    `positions` is only called when a line is rejected (computing every line's
    position up front cost more than parsing the good ones).
    """
    if hasattr(parser, "feed_many"):
        attempts, rejected = parser.feed_many(lines)
    else:
        attempts, rejected = [], []
        feed = parser.feed
        for i, data in enumerate(lines):
            r = feed(data, "")
            if r is None:
                continue
            if type(r) is Attempt:
                attempts.append(r)
            else:
                rejected.append((i, r))
    dead: list[DeadLetter] = []
    if rejected:
        where = positions()
        dead = [DeadLetter(d.source, where[i], d.raw, d.reason) for i, d in rejected]
    return attempts, dead


def _open(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_chunks(path: Path, chunk_bytes: int = 16 << 20) -> Iterator[tuple[list[bytes], int]]:
    """(lines, byte offset of the first) in chunks; a last line without newline counts too."""
    offset = 0
    rest = b""
    with _open(path) as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            body, rest = data[:cut], data[cut + 1:]
            yield body.split(b"\n"), offset
            offset += cut + 1
        if rest:
            yield [rest], offset


def _positions(path: str, lines: list[bytes], base: int) -> Callable[[], list[str]]:
    def compute() -> list[str]:
        offsets = itertools.accumulate((len(x) + 1 for x in lines[:-1]), initial=base)
        return [f"{path}:{o}" for o in offsets]

    return compute


def import_file(path: Path, parser: Any, ingestor: Ingestor, *, chunk_bytes: int = 16 << 20,
                progress: Callable[[int], None] | None = None) -> Stats:
    """Backfill one file. Safe to repeat: attempts and dead letters are stored once.

    One transaction per chunk. (A writer thread overlapping parse and store was
    tried: the GIL hand-offs around each SQLite step made it slower, not faster.)
    """
    stats = Stats()
    name = str(path)
    for lines, base in read_chunks(path, chunk_bytes):
        attempts, dead = parse_lines(parser, lines, _positions(name, lines, base))
        size = sum(map(len, lines)) + len(lines)
        stats.lines += len(lines)
        stats.attempts += len(attempts)
        stats.dead_letters += len(dead)
        stats.bytes += size
        stats.add(ingestor.ingest(attempts, dead))
        if progress is not None:
            progress(size)
    return stats


class TailRunner:
    """One live file source: poll, parse, commit attempts with the position."""

    def __init__(self, name: str, path: Path, parser: Any, ingestor: Ingestor, *, start_at_end: bool = False,
                 log: Any = None, max_bytes: int = 4 << 20) -> None:
        self.name = name
        self.path = path
        self.parser = parser
        self.ingestor = ingestor
        self.log = log
        self.max_bytes = max_bytes
        saved = load_cursor(ingestor.store, name)
        self._committed: TailPosition | None = None
        self._committed_state: dict[str, Any] = {}
        if saved is not None and saved.path is not None:
            self._committed = TailPosition(saved.path, saved.device, saved.inode, saved.offset, saved.head)
            self._committed_state = saved.state or {}
        self._restore_state()
        self.tail = FileTail(path, self._committed, start_at_end=start_at_end and saved is None)
        self.lag_bytes = 0
        self.last_notes: list[str] = []

    def _restore_state(self) -> None:
        if hasattr(self.parser, "pending"):
            self.parser.pending = copy.deepcopy(self._committed_state.get("pending", {}))

    def _state(self) -> dict[str, Any]:
        return {"pending": self.parser.pending} if hasattr(self.parser, "pending") else {}

    def poll(self) -> Stats:
        stats = Stats()
        for _ in range(64):  # bounded, so one busy file cannot starve the other jobs
            lines, pos, notes = self.tail.poll(self.max_bytes)
            for note in notes:
                stats.notes.append(note)
                if self.log is not None:
                    self.log.info("source.note", source=self.name, note=note)
            if not lines and pos == self._committed:
                break
            data = [ln.data for ln in lines]
            attempts, dead = parse_lines(self.parser, data,
                                         lambda lines=lines: [f"{ln.path}:{ln.offset}" for ln in lines])
            cursor = CursorWrite(self.name, pos.path, pos.device, pos.inode, pos.offset, pos.head, self._state())
            try:
                result = self.ingestor.ingest(attempts, dead, cursor)
            except Exception:
                # rewind to what the database has, so the same lines are read again
                self.tail.close()
                self.tail = FileTail(self.path, self._committed)
                self._restore_state()
                raise
            self._committed = pos
            self._committed_state = copy.deepcopy(self._state())
            stats.lines += len(lines)
            stats.attempts += len(attempts)
            stats.dead_letters += len(dead)
            stats.add(result)
            if self.log is not None and (lines or dead):
                self.log.info("source.batch", source=self.name, lines=len(lines), attempts=len(attempts),
                              dead_letters=len(dead), opened=len(result.opened), cancelled=len(result.cancelled))
                for cid in result.opened:
                    self.log.info("callback.opened", source=self.name, callback_id=cid)
            if not lines:
                break
        try:
            size = os.stat(self.path).st_size
            self.lag_bytes = max(0, size - (self._committed.offset if self._committed else 0))
        except OSError:
            self.lag_bytes = 0
        return stats

    def close(self) -> None:
        self.tail.close()
