"""One FIFO line -> an Event, or a Rejected line with its reason.

Pure functions, no I/O: the reader must survive any byte sequence, so a bad line is a value the
reader logs, never an exception.  Formats are those keepalived writes (see KEEPALIVED.md):

    INSTANCE "VI_1" MASTER 100          GROUP "VG_1" BACKUP 0
    VS [10.0.0.1]:tcp:80 UP             VS FWM 7 DOWN          VS [web_group]:80 UP
    RS [192.168.1.11]:tcp:80 [10.0.0.1]:tcp:80 DOWN           RS [192.168.1.11]:tcp:0 FWM 7 UP
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VRRP_TYPES = frozenset({"INSTANCE", "GROUP"})
VRRP_STATES = frozenset({
    "MASTER", "BACKUP", "FAULT", "STOP", "DELETED",
    "MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY",
})
CHECKER_STATES = frozenset({"UP", "DOWN"})
#: Synthetic events the reader journals about itself (never written by keepalived).
READER_TYPE = "READER"
READER_STATES = frozenset({"STOP", "RELOAD", "EOF"})
#: Longest line accepted; keepalived's lines are well under PIPE_BUF (4096).
MAX_LINE = 4096

_VRRP = re.compile(r'(INSTANCE|GROUP) "([^"\s]+)" ([A-Z_]+) (-?\d{1,6})')
# A virtual server: "[addr]:proto:port", "[group]:port" or "FWM n" (the one with a space).
_VS = r"(?:FWM \d+|\[[^\]\s]+\](?::[a-z]+)?:\d+)"
_RS = r"\[[^\]\s]+\]:[a-z]+:\d+"
_VS_LINE = re.compile(rf"VS ({_VS}) (UP|DOWN)")
_RS_LINE = re.compile(rf"RS ({_RS}) ({_VS}) (UP|DOWN)")


@dataclass(frozen=True, slots=True)
class Event:
    """A state change as keepalived reported it.  `vs` is set only for RS lines."""

    type: str
    name: str
    state: str
    priority: int = 0
    vs: str = ""

    @property
    def key(self) -> str:
        """What `status` groups by: an INSTANCE and a GROUP may share a name."""
        return f"{self.type} {self.name}"

    def fields(self) -> list[str]:
        """Arguments appended to the handler: keepalived's `TYPE NAME STATE PRIORITY` (+ VS for RS)."""
        out = [self.type, self.name, self.state, str(self.priority)]
        if self.vs:
            out.append(self.vs)
        return out

    def __str__(self) -> str:
        if self.type in VRRP_TYPES:
            return f'{self.type} "{self.name}" {self.state} {self.priority}'
        if self.vs:
            return f"{self.type} {self.name} {self.vs} {self.state}"
        return f"{self.type} {self.name} {self.state}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line that is not an event, kept so the log can say exactly what arrived and why it was skipped."""

    raw: bytes
    reason: str

    def shown(self, limit: int = 120) -> str:
        """The line as printable text, cut to `limit` characters, for a log line."""
        text = self.raw[:limit].decode("utf-8", "backslashreplace")
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
        return text + ("..." if len(self.raw) > limit else "")


def parse_line(raw: bytes) -> Event | Rejected:
    """Parse one line (without its newline); NULs around it are dropped (newer keepalived appends one)."""
    data = raw.strip(b"\0")
    if not data:
        return Rejected(raw, "empty line")
    if len(data) > MAX_LINE:
        return Rejected(raw, f"line longer than {MAX_LINE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(raw, f"not UTF-8 (byte {exc.start})")
    kind = text.split(" ", 1)[0]
    if kind in VRRP_TYPES:
        return _parse_vrrp(raw, text)
    if kind in ("VS", "RS"):
        return _parse_checker(raw, text, kind)
    return Rejected(raw, f"unknown type {kind[:40]!r} (expected INSTANCE, GROUP, VS or RS)")


def _parse_vrrp(raw: bytes, text: str) -> Event | Rejected:
    m = _VRRP.fullmatch(text)
    if m is None:
        return Rejected(raw, 'malformed VRRP line (expected: TYPE "NAME" STATE PRIORITY)')
    kind, name, state, prio = m.groups()
    if state not in VRRP_STATES:
        return Rejected(raw, f"unknown state {state!r}")
    priority = int(prio)
    if not 0 <= priority <= 255:
        return Rejected(raw, f"priority {priority} outside 0..255")
    return Event(kind, name, state, priority)


def _parse_checker(raw: bytes, text: str, kind: str) -> Event | Rejected:
    if kind == "VS":
        m = _VS_LINE.fullmatch(text)
        if m is None:
            return Rejected(raw, "malformed VS line (expected: VS <virtual server> UP|DOWN)")
        return Event("VS", m.group(1), m.group(2))
    m = _RS_LINE.fullmatch(text)
    if m is None:
        return Rejected(raw, "malformed RS line (expected: RS <real server> <virtual server> UP|DOWN)")
    return Event("RS", m.group(1), m.group(3), vs=m.group(2))
