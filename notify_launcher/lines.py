"""Bytes as they come out of the FIFO -> complete lines, in bounded memory.

keepalived writes whole lines, but a read() may end mid-line, and a hostile or broken writer may
send a "line" that never ends: a line longer than the limit is handed on once, cut at the limit
(so the parser rejects it and the log says so), and the rest of it, up to its newline, is dropped.

Where a line ends without a newline is the caller's knowledge, not the bytes': `flush()` hands on
what is pending as a line of its own (the reader calls it whenever the pipe is empty, see
intake.py), so a writer's unterminated bytes never prefix the next writer's line.
"""

from __future__ import annotations


class LineSplitter:
    """Pure state machine: `feed(bytes)` returns the lines completed by those bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = b""
        self._discarding = False  # inside an over-long line, already handed on

    def feed(self, data: bytes) -> list[bytes]:
        buf, start, out = self._buf + data, 0, []
        while (nl := buf.find(b"\n", start)) >= 0:
            if self._discarding:
                self._discarding = False
            else:
                out.append(buf[start:nl])
            start = nl + 1
        rest = buf[start:]
        if len(rest) > self.limit:
            if not self._discarding:
                out.append(rest)
                self._discarding = True
            rest = b""
        self._buf = rest
        return out

    @property
    def cut(self) -> bool:
        """Bytes of a line wait for its end (a read stopped inside it)."""
        return bool(self._buf) or self._discarding

    def flush(self) -> bytes | None:
        """What is pending, as a line of its own (None: nothing, or only NULs: newer keepalived writes
        one after each newline, the end of the line before, not a line); an over-long line's rest
        is no longer skipped."""
        rest, self._buf, self._discarding = self._buf, b"", False
        return rest if rest.strip(b"\0") else None
