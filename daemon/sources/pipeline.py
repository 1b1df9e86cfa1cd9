"""Lines → parser → ingest: the backfill import and the live tail share this.

A tail batch commits its attempts, dead letters and file position in one
transaction. If the transaction fails, the tail and the parser's in-queue
state are rewound to what was committed, so the same lines are read again.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import gzip
import itertools
import marshal
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callback_queue.attempts import Attempt, DeadLetter
from callback_queue.ingest import CursorWrite, Ingestor, IngestResult, load_cursor, plain_row

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


def parse_lines(parser: Any, lines: list[bytes] | bytes, positions: Callable[[], list[str]]
                ) -> tuple[list[tuple[Any, ...]], list[DeadLetter]]:
    """Feed lines to a parser: (attempts as `plain_row`s, dead letters with "<path>:<byte offset>").

    `lines` may be one block (the lines joined by "\n") for a parser with `feed_rows`.
    `positions` is only called when a line is rejected (computing every line's
    position up front cost more than parsing the good ones).
    """
    if hasattr(parser, "feed_rows"):
        rows, rejected = parser.feed_rows(lines)
    else:
        if isinstance(lines, bytes):
            lines = lines.split(b"\n")
        rows, rejected = [], []
        feed = parser.feed
        for i, data in enumerate(lines):
            r = feed(data, "")
            if r is None:
                continue
            if type(r) is Attempt:
                rows.append(plain_row(r))
            else:
                rejected.append((i, r))
    dead: list[DeadLetter] = []
    if rejected:
        where = positions()
        dead = [DeadLetter(d.source, where[i], d.raw, d.reason) for i, d in rejected]
    return rows, dead


def _open(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_blocks(path: Path, chunk_bytes: int = 16 << 20) -> Iterator[tuple[bytes, int]]:
    """(block of whole lines joined by "\n", byte offset of its first) in chunks of about
    `chunk_bytes`; a last line without newline counts too."""
    offset = 0
    rest = b""
    with _open(path) as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            cut = block.rfind(b"\n")
            if cut < 0:
                rest += block
                continue
            yield rest + block[:cut], offset
            offset += len(rest) + cut + 1
            rest = block[cut + 1:]
        if rest:
            yield rest, offset


def _positions(path: str, lines: list[bytes] | bytes, base: int) -> Callable[[], list[str]]:
    def compute() -> list[str]:
        split = lines.split(b"\n") if isinstance(lines, bytes) else lines
        offsets = itertools.accumulate((len(x) + 1 for x in split[:-1]), initial=base)
        return [f"{path}:{o}" for o in offsets]

    return compute


def _size(path: Path) -> int | None:
    """The bytes an import will read (None for a gzipped file: its size says little)."""
    with open(path, "rb") as f:
        return None if f.read(2) == b"\x1f\x8b" else os.fstat(f.fileno()).st_size


class ParseWorkerError(RuntimeError):
    """The parse worker of an import failed."""


def import_file(path: Path, parser: Any, ingestor: Ingestor, *, chunk_bytes: int = 16 << 20,
                progress: Callable[[int], None] | None = None, workers: int | None = None) -> Stats:
    """Backfill one file. Safe to repeat: attempts and dead letters are stored once.

    The batches go through `Ingestor.bulk`: on SQLite a large import into a smaller table is one
    transaction (up to a million attempts) that builds the attempts indexes once at its end; otherwise
    one transaction per chunk.

    With `workers=1` (the default for a file of 8 MiB or more, when this process runs no other
    thread and can fork) a forked process reads and parses the file and hands the rows over in
    marshal'ed chunks, while this one stores them: the two halves overlap on two cores. The parser's
    state (visits still in the queue) comes back at the end, so the next file continues it. (A writer
    *thread* was tried: the GIL hand-offs around each SQLite step made it slower, not faster.) The
    storing side then also keeps the attempts' time index up to date as the rows come (see `BulkLoad`)
    rather than build it after the last: work moved out of the serial end, into the time it would
    otherwise spend waiting on the worker.
    """
    stats = Stats()
    total = _size(path)
    if workers is None:
        workers = int(bool(total and total >= 8 << 20 and _can_fork()))
    forked = bool(workers and hasattr(parser, "feed_rows"))
    chunks = (_parse_in_worker(path, parser, min(chunk_bytes, 4 << 20)) if forked
              else _parse_here(path, parser, chunk_bytes))
    # (closing: a failed batch ends the worker, and gives the collector back, right away)
    with contextlib.closing(chunks), ingestor.bulk(keep_time_index=forked) as bulk:
        for rows, dead, base, size, lines in chunks:
            stats.lines += lines
            stats.attempts += len(rows)
            stats.dead_letters += len(dead)
            stats.bytes += size
            # the rows still to come, at this chunk's rows per byte
            more = len(rows) * max(0, total - base - size) // size if total else 0
            bulk.add(rows, dead, more=more)
            if progress is not None:
                progress(size)
    stats.add(bulk.result)
    return stats


_Chunk = tuple[list[tuple[Any, ...]], list[DeadLetter], int, int, int]  # rows, dead, offset, bytes, lines


def _parse_here(path: Path, parser: Any, chunk_bytes: int) -> Iterator[_Chunk]:
    name = str(path)
    for block, base in read_blocks(path, chunk_bytes):
        rows, dead = parse_lines(parser, block, _positions(name, block, base))
        yield rows, dead, base, len(block) + 1, block.count(b"\n") + 1


def _can_fork() -> bool:
    return (hasattr(os, "fork") and "fork" in multiprocessing.get_all_start_methods()
            and threading.active_count() == 1)


def _parse_in_worker(path: Path, parser: Any, chunk_bytes: int) -> Iterator[_Chunk]:
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_parse_worker, args=(send, path, parser, chunk_bytes, recv), daemon=True,
                       name="callbackd-parse")
    proc.start()
    send.close()
    # no cyclic garbage collection while the rows stream in: each chunk unpacks ~20,000 tuples, and the
    # collections they set off (a full one among them) cost this side ~0.08 s CPU per 400,000 rows, while
    # storing them leaves only ~50 objects in cycles (collected once the collector is back, at the end)
    collecting = gc.isenabled()
    gc.disable()
    try:
        while True:
            try:
                msg = marshal.loads(recv.recv_bytes())
            except EOFError:
                proc.join(5)
                raise ParseWorkerError(f"{path}: the parse worker died (exit code {proc.exitcode})") from None
            if msg[0] == "rows":
                _, rows, dead, base, size, lines = msg
                yield rows, [DeadLetter(*d) for d in dead], base, size, lines
            elif msg[0] == "end":
                for attr, value in msg[1].items():
                    setattr(parser, attr, value)
                return
            else:
                raise ParseWorkerError(f"{path}: {msg[1]}")
    finally:
        if collecting:
            gc.enable()
        recv.close()
        if proc.is_alive():
            proc.terminate()
        proc.join()


def _parse_worker(send: Any, path: Path, parser: Any, chunk_bytes: int, recv: Any = None) -> None:
    # the read end came along with the fork: holding it, this process would be a reader of its own pipe,
    # and once the importer is gone (SIGKILL) its next send would block for ever instead of failing
    if recv is not None:
        recv.close()
    # the parse makes no reference cycles, and this process ends with the file: the collector would only
    # scan the heap inherited from the importing process (copying its pages) and the visits in the queue,
    # ~0.1 s of the worker's ~1.3 s for 1.1 million lines
    gc.disable()
    try:
        for rows, dead, base, size, lines in _parse_here(path, parser, chunk_bytes):
            dead_t = [(d.source, d.position, d.raw, d.reason) for d in dead]
            send.send_bytes(marshal.dumps(("rows", rows, dead_t, base, size, lines)))
        state = {attr: getattr(parser, attr) for attr in ("pending", "unknown_verbs") if hasattr(parser, attr)}
        send.send_bytes(marshal.dumps(("end", state)))
    except BaseException as exc:  # noqa: BLE001 - reported to the importing process, which raises it
        with contextlib.suppress(OSError):  # (the importing process is gone: nobody to tell)
            send.send_bytes(marshal.dumps(("error", f"{type(exc).__name__}: {exc}")))
    finally:
        send.close()


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
        self._lock = threading.Lock()

    def _restore_state(self) -> None:
        if hasattr(self.parser, "pending"):
            self.parser.pending = copy.deepcopy(self._committed_state.get("pending", {}))

    def _state(self) -> dict[str, Any]:
        return {"pending": self.parser.pending} if hasattr(self.parser, "pending") else {}

    def poll(self) -> Stats:
        with self._lock:    # close() waits for a poll under way (a leader change reopens the tails)
            return self._poll()

    def _poll(self) -> Stats:
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
                result = self.ingestor.ingest_rows(attempts, dead, cursor)
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
                # a batch that changed the queue or lost input is news; routine ones are there at debug
                # level (the hotline's every call would otherwise be a line: metrics count them)
                notable = dead or result.opened or result.cancelled
                (self.log.info if notable else self.log.debug)(
                    "source.batch", source=self.name, lines=len(lines), attempts=len(attempts),
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
        with self._lock:
            self.tail.close()
