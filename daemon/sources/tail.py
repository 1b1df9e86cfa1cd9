"""Follow a growing log file (queue_log, CDR Master.csv) across rotations, without threads or sleeps.

The caller polls. Each poll returns the complete lines read since the last poll, the position after
them and human-readable notes. Positions are committed by the caller together with what it made of the
lines, so a new :class:`FileTail` built from a saved :class:`TailPosition` resumes exactly there.

Rotation by rename: the old descriptor stays open and is read to its end; the tail switches to the file
now at the path once that file has data (which means the writer has moved to it), so lines the writer
appends to the renamed file in between are not lost. Several rotations while the tail still reads an old
file are followed in order. Copytruncate and truncate-and-refill are detected by size and by ``head``,
a hash of the file's first bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, repeat
from operator import add
from typing import Any

__all__ = ["FileTail", "Line", "TailPosition"]

CHUNK = 1 << 20
HEAD_BYTES = 64
MAX_OPEN = 8  # open files kept while waiting for rotated files' writers to move on
_consume = partial(deque, maxlen=0)


@dataclass(frozen=True)
class TailPosition:
    """Where to resume: the next unread byte of the file identified by (device, inode)."""

    path: str
    device: int | None
    inode: int | None
    offset: int
    head: str | None  # "N:sha1hex" of the file's first N (<= 64) bytes; None while the file is empty

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_json` reverses it."""
        return {"path": self.path, "device": self.device, "inode": self.inode,
                "offset": self.offset, "head": self.head}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TailPosition:
        """Rebuild a position from :meth:`to_json` output; ValueError if it is malformed."""
        try:
            path, dev, ino, off, head = d["path"], d.get("device"), d.get("inode"), d["offset"], d.get("head")
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bad tail position: {d!r}") from e
        ok = (isinstance(path, str) and all(v is None or (type(v) is int and v >= 0) for v in (dev, ino))
              and type(off) is int and off >= 0 and (head is None or _parse_head(head) is not None))
        if not ok:
            raise ValueError(f"bad tail position: {d!r}")
        return cls(path, dev, ino, off, head)


@dataclass(frozen=True, slots=True)
class Line:
    """One line: its start offset in ``path``, its bytes without the b"\\n" (a b"\\r" is kept)."""

    offset: int
    data: bytes
    path: str


_new = object.__new__
_set_offset, _set_data, _set_path = (Line.__dict__[k].__set__ for k in ("offset", "data", "path"))


def _make_lines(parts: list[bytes], offset: int, path: str) -> list[Line]:
    """Line objects for consecutive lines starting at ``offset``.

    Equivalent to a loop of ``Line(off, part, path)``; this fills the slots with C-level ``map`` calls,
    twice as fast as the frozen dataclass __init__ (a 77 MB queue_log is about a million lines).
    """
    out = list(map(_new, repeat(Line, len(parts))))
    _consume(map(_set_offset, out, accumulate(map(add, map(len, parts), repeat(1)), initial=offset)))
    _consume(map(_set_data, out, parts))
    _consume(map(_set_path, out, repeat(path)))
    return out


def _parse_head(head: str) -> int | None:
    n, sep, digest = head.partition(":")
    if not sep or not n.isdigit() or not 0 < int(n) <= HEAD_BYTES or len(digest) != 40:
        return None
    return int(n)


def _head(fd: int, n: int) -> str | None:
    data = os.pread(fd, n, 0)
    return f"{len(data)}:{hashlib.sha1(data).hexdigest()}" if len(data) == n and n > 0 else None


def _after_last_newline(fd: int, size: int) -> int:
    """Offset just past the file's last b"\\n" (0 if none): where start_at_end begins."""
    pos = size
    while pos > 0:
        start = max(0, pos - (64 << 10))
        i = os.pread(fd, pos - start, start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


class _Open:
    """An open file being (or waiting to be) read."""

    __slots__ = ("fd", "dev", "ino", "path", "offset", "head")

    def __init__(self, fd: int, st: os.stat_result, path: str, offset: int = 0,
                 head: str | None = None) -> None:
        self.fd, self.dev, self.ino = fd, st.st_dev, st.st_ino
        self.path, self.offset, self.head = path, offset, head


def _open(path: str) -> tuple[int, os.stat_result] | str:
    """(fd, fstat) of a regular file, or the reason it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: never hang on a FIFO
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot open {path}: {e.strerror or e}"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return f"{path} is not a regular file"
    return fd, st


class FileTail:
    """Follow ``path``; see the module docstring. Not thread-safe; call :meth:`close` when done."""

    def __init__(self, path: str | os.PathLike[str], position: TailPosition | None = None, *,
                 start_at_end: bool = False) -> None:
        self._path = os.fspath(path)
        self._pending = position  # saved position, until resolved against the files on disk
        self._start_at_end = start_at_end and position is None
        self._files: list[_Open] = []  # oldest first; only _files[0] is read, later ones wait for it
        self._sticky: dict[str, str] = {}  # conditions already reported, so they are noted once
        self._closed = False

    @property
    def position(self) -> TailPosition:
        """The position after the lines returned so far."""
        if self._files:
            f = self._files[0]
            return TailPosition(self._path, f.dev, f.ino, f.offset, f.head)
        return self._pending or TailPosition(self._path, None, None, 0, None)

    def close(self) -> None:
        """Close every descriptor. Idempotent."""
        self._closed = True
        while self._files:
            os.close(self._files.pop().fd)

    def __enter__(self) -> FileTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, max_bytes: int = 4 << 20) -> tuple[list[Line], TailPosition, list[str]]:
        """Complete lines since the last poll (about max_bytes at most), the position after them, notes."""
        if self._closed:
            raise ValueError("poll() on a closed FileTail")
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        notes: list[str] = []
        lines: list[Line] = []
        budget = max_bytes
        try:
            if self._pending is not None and not self._resume(notes):
                return lines, self.position, notes
            self._discover(notes)
            while self._files:
                f = self._files[0]
                # look at the newer files BEFORE draining: data there means the writer left f for good
                moved_on = any(os.fstat(g.fd).st_size > 0 for g in self._files[1:])
                self._check(f, notes)
                budget, eof = self._drain(f, lines, budget)
                if not (eof and moved_on):
                    break
                self._retire(f, lines, notes)
            self._sticky.pop("read", None)
        except OSError as e:
            self._note(notes, "read", f"read error on {self._path}: {e.strerror or e}")
        return lines, self.position, notes

    # -- internals --------------------------------------------------------------------------------

    def _note(self, notes: list[str], key: str, msg: str) -> None:
        if self._sticky.get(key) != msg:
            self._sticky[key] = msg
            notes.append(msg)

    def _resume(self, notes: list[str]) -> bool:
        """Find the saved position's file: at the path, or renamed beside it. False: retry next poll."""
        pos = self._pending
        assert pos is not None
        if pos.inode is None:
            self._pending = None
            return True
        d, base = os.path.split(self._path)
        try:
            with os.scandir(d or ".") as it:
                siblings = sorted(e.path for e in it if e.name.startswith(base) and e.name != base)
        except OSError as e:
            self._note(notes, "path", f"cannot list {d or '.'}: {e.strerror or e}")
            return False
        for p in [self._path, *siblings]:
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != (pos.device, pos.inode):
                continue
            r = _open(p)
            if r == "missing":  # renamed away between stat and open
                continue
            if isinstance(r, str):
                self._note(notes, "path", r)
                return False
            fd, st = r
            n = _parse_head(pos.head) if pos.head else None
            try:
                same = pos.offset <= st.st_size and (n is None or _head(fd, n) == pos.head)
            except OSError:
                os.close(fd)
                raise
            if same:
                self._files.append(_Open(fd, st, p, pos.offset, pos.head))
                if p != self._path:
                    notes.append(f"resuming rotated file {p} at offset {pos.offset}, then {self._path}")
                break
            os.close(fd)
            if p == self._path:
                notes.append(f"{p} was truncated or replaced while we were down: restarting at 0")
                break
        else:
            if not os.path.exists(self._path):  # e.g. not mounted yet: keep the saved position meanwhile
                self._note(notes, "path", f"waiting for {self._path} to appear")
                return False
            notes.append(f"the saved position's file is gone (rotated or replaced while we were down): "
                         f"reading {self._path} from 0")
        self._pending = None
        return True

    def _discover(self, notes: list[str]) -> None:
        """Open the file now at the path if it is not one we already hold."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            self._start_at_end = False  # a file that appears later is new: read it all
            self._note(notes, "path", f"{self._path} is gone (deleted or renamed): reading the open file "
                       f"to its end, waiting for {self._path} to reappear" if self._files
                       else f"waiting for {self._path} to appear")
            return
        except OSError as e:
            self._note(notes, "path", f"cannot stat {self._path}: {e.strerror or e}")
            return
        if any((f.dev, f.ino) == (st.st_dev, st.st_ino) for f in self._files):
            self._sticky.pop("path", None)
            return
        r = _open(self._path)
        if isinstance(r, str):
            if r != "missing":
                self._note(notes, "path", r)
            return
        fd, st = r
        if any((f.dev, f.ino) == (st.st_dev, st.st_ino) for f in self._files):  # raced with a rename
            os.close(fd)
            return
        self._sticky.pop("path", None)
        f = _Open(fd, st, self._path)
        if self._start_at_end:
            try:
                f.offset = _after_last_newline(fd, st.st_size)
            except OSError:
                os.close(fd)
                raise
            self._start_at_end = False
            notes.append(f"starting at the end of {self._path} (offset {f.offset})")
        if len(self._files) >= MAX_OPEN:  # pathological: many rotations of files that stayed empty
            os.close(self._files.pop(1).fd)
        self._files.append(f)

    def _check(self, f: _Open, notes: list[str]) -> None:
        """Detect truncation (copytruncate) and truncate-and-refill; keep ``head`` current."""
        size = os.fstat(f.fd).st_size
        n = _parse_head(f.head) if f.head else None
        if size < f.offset:
            notes.append(f"{f.path} truncated (copytruncate): restarting at 0")
            f.offset, f.head, n = 0, None, None
        elif n is not None and (size < n or _head(f.fd, n) != f.head):
            notes.append(f"{f.path} was replaced (its first bytes changed): restarting at 0")
            f.offset, f.head, n = 0, None, None
        if size > 0 and (n is None or (n < HEAD_BYTES and size > n)):
            f.head = _head(f.fd, min(HEAD_BYTES, size)) or f.head

    def _drain(self, f: _Open, lines: list[Line], budget: int) -> tuple[int, bool]:
        """Append f's complete lines from f.offset, about ``budget`` bytes; (budget left, reached EOF)."""
        fd, path, pos = f.fd, f.path, f.offset
        pieces: list[bytes] = []  # a partial line read so far, kept in pieces: long lines stay linear
        plen = 0
        while True:
            room = budget - plen
            over = room <= 0
            if over and lines:
                return budget, False
            want = CHUNK if over else min(CHUNK, room)  # over: one line longer than max_bytes, finish it
            data = os.pread(fd, want, pos + plen)
            cut = data.find(b"\n") if over else data.rfind(b"\n")
            if cut >= 0:
                body = b"".join([*pieces, data[:cut]]) if pieces else data[:cut]
                lines += _make_lines(body.split(b"\n"), pos, path)
                pos = f.offset = pos + plen + cut + 1
                budget -= plen + cut + 1
                if over:
                    return budget, False
                pieces, plen = [data[cut + 1:]], len(data) - cut - 1
            elif data:
                pieces.append(data)
                plen += len(data)
            if len(data) < want:
                return budget, True

    def _retire(self, f: _Open, lines: list[Line], notes: list[str]) -> None:
        """f is finished (the writer moved on): emit its partial last line, close it, switch."""
        rest = bytearray()
        while chunk := os.pread(f.fd, CHUNK, f.offset + len(rest)):
            rest += chunk
        parts = bytes(rest).split(b"\n")
        if parts[-1]:
            notes.append(f"{f.path}: the old file ended with a partial line ({len(parts[-1])} bytes), "
                         "emitted as its final line")
        else:
            parts.pop()
        for part in parts:
            lines.append(Line(f.offset, part, f.path))
            f.offset += len(part) + 1
        how = "deleted" if os.fstat(f.fd).st_nlink == 0 else "renamed"
        os.close(f.fd)
        self._files.pop(0)
        notes.append(f"{self._path} rotated: {how}, switched to new file")
