"""One FIFO line -> an Event, or a Rejected line with its reason.

Pure functions, no I/O: the reader must survive any byte sequence, so a bad line is a value the
reader logs, never an exception.  Formats are those keepalived writes (see docs/keepalived.md):

    INSTANCE "VI_1" MASTER 100          GROUP "VG_1" BACKUP 0
    VS [10.0.0.1]:tcp:80 UP             VS FWM 7 DOWN          VS [web_group]:80 UP
    RS [192.168.1.11]:tcp:80 [10.0.0.1]:tcp:80 DOWN           RS [192.168.1.11]:tcp:0 FWM 7 UP

The input policy (the README's "What the reader accepts"; this module is its only place):

- NULs before and after the line are dropped: newer keepalived writes one after the newline.
- keepalived writes C strings, so a control character inside the line (NUL, tab, CR, ESC, DEL,
  C1: anything below 0x20, 0x7f to 0x9f) cannot come from it: the line is rejected before it is
  journaled.  This is also what keeps every accepted field safe for the journal's tab-separated
  lines and for the handler's argv and environment (where a NUL makes the spawn fail).
- A line of the right shape is never dropped for a value nobody foresaw: a state word of the right
  shape (``[A-Z_]+``) that is not one keepalived writes today (a newer keepalived), or a priority
  outside 0..255, is an Event like any other and its action runs.  `unforeseen` says what was
  new, so the reader can warn once per new word; the parser itself keeps no memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from notify_launcher.log import escaped

VRRP_TYPES = frozenset({"INSTANCE", "GROUP"})
VRRP_STATES = frozenset({
    "MASTER", "BACKUP", "FAULT", "STOP", "DELETED",
    "MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY",
})
#: VRRP "states" that are notices: the instance stays in the state it was in (docs/keepalived.md).
#: Frequent (MASTER_RX_LOWER_PRI comes with every lower-priority advert a master hears), so they are
#: also the quiet states by default: journaled and logged, run only when a [match] rule names them.
VRRP_NOTICES = ("MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY")
CHECKER_STATES = frozenset({"UP", "DOWN"})
#: The state words keepalived writes today, per line type (any other word is `unforeseen`).
KNOWN_STATES = {"INSTANCE": VRRP_STATES, "GROUP": VRRP_STATES, "VS": CHECKER_STATES, "RS": CHECKER_STATES}
#: Synthetic events the reader journals about itself (never written by keepalived).
READER_TYPE = "READER"
#: Longest line accepted; keepalived's lines are well under PIPE_BUF (4096).  It also keeps a
#: priority's digits under int()'s 4300-digit limit, so parsing one never raises.
MAX_LINE = 4096

#: C0 controls, DEL and C1 controls: never in keepalived's C strings; tab, CR, NUL break the journal
#: or argv/env.  (Other Unicode whitespace cannot reach a field: the field patterns exclude \s.)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# ASCII digits only ([0-9], not \d): "١٠٠" is not a number keepalived prints.
_STATE = r"([A-Z_]+)"
_VRRP = re.compile(rf'(INSTANCE|GROUP) "([^"\s]+)" {_STATE} (-?[0-9]+)')
# A virtual server: "[addr]:proto:port", "[group]:port" or "FWM n" (the one with a space).
# The protocol is tcp, udp, sctp, none, or `?` for anything else (docs/keepalived.md, "Line formats").
_VS = r"(?:FWM [0-9]+|\[[^\]\s]+\](?::(?:[a-z]+|\?))?:[0-9]+)"
_RS = r"\[[^\]\s]+\]:(?:[a-z]+|\?):[0-9]+"
_VS_LINE = re.compile(rf"VS ({_VS}) {_STATE}")
_RS_LINE = re.compile(rf"RS ({_RS}) ({_VS}) {_STATE}")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Rejected:
    """A line that is not an event, kept so the log can say exactly what arrived and why it was skipped."""

    raw: bytes
    reason: str

    def shown(self, limit: int = 120) -> str:
        """The line as printable text, cut to `limit` characters, for a log line."""
        text = self.raw[:limit].decode("utf-8", "backslashreplace")
        text = escaped(text)
        return text + ("..." if len(self.raw) > limit else "")


def parse_line(raw: bytes) -> Event | Rejected:
    """Parse one line (without its newline) under the module's input policy; NULs around it are
    dropped (newer keepalived appends one)."""
    data = raw.strip(b"\0")
    if not data:
        return Rejected(raw, "empty line")
    if len(data) > MAX_LINE:
        return Rejected(raw, f"line longer than {MAX_LINE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(raw, f"not UTF-8 (byte {exc.start})")
    control = _CONTROL.search(text)
    if control is not None:
        return Rejected(raw, f"control character 0x{ord(control.group()):02x} at character {control.start()}: "
                             f"not from keepalived, which writes C strings")
    kind = text.split(" ", 1)[0]
    if kind in VRRP_TYPES:
        return _parse_vrrp(raw, text)
    if kind in ("VS", "RS"):
        return _parse_checker(raw, text, kind)
    return Rejected(raw, f"unknown type {kind[:40]!r} (expected INSTANCE, GROUP, VS or RS)")


def unforeseen(event: Event) -> str | None:
    """What in an accepted event keepalived does not write today (None: nothing).  The event runs all
    the same (a newer keepalived may have new words); this is for the reader's once-per-word warning,
    so it names the word, not the instance."""
    known = KNOWN_STATES.get(event.type)
    if known is None:
        return None  # the reader's own events
    news = []
    if event.state not in known:
        news.append(f"unknown state {event.state!r} ({event.type} line)")
    if not 0 <= event.priority <= 255:
        news.append(f"priority {event.priority} outside 0..255")
    return "; ".join(news) or None


def _parse_vrrp(raw: bytes, text: str) -> Event | Rejected:
    m = _VRRP.fullmatch(text)
    if m is None:
        return Rejected(raw, 'malformed VRRP line (expected: TYPE "NAME" STATE PRIORITY)')
    kind, name, state, prio = m.groups()
    return Event(kind, name, state, int(prio))


def _parse_checker(raw: bytes, text: str, kind: str) -> Event | Rejected:
    if kind == "VS":
        m = _VS_LINE.fullmatch(text)
        if m is None:
            return Rejected(raw, "malformed VS line (expected: VS <virtual server> STATE)")
        return Event("VS", m.group(1), m.group(2))
    m = _RS_LINE.fullmatch(text)
    if m is None:
        return Rejected(raw, "malformed RS line (expected: RS <real server> <virtual server> STATE)")
    return Event("RS", m.group(1), m.group(3), vs=m.group(2))
