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

from notify_launcher.log import escaped
from notify_launcher.value import Value

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

# The grammar, read with str methods (the `re` module costs the reader's start ~2.5 ms to import),
# every field matched whole (the reference regular expressions are in tests/test_events.py):
#   VRRP line    (INSTANCE|GROUP) "NAME" STATE PRIORITY
#   VS line      VS VS_ID STATE
#   RS line      RS [ADDR]:PROTO:PORT VS_ID STATE
#   NAME, ADDR   one or more characters, no whitespace (str.isspace), no '"' (NAME), no ']' (ADDR)
#   STATE        [A-Z_]+            PRIORITY  -?[0-9]+        PORT  [0-9]+
#   PROTO        [a-z]+ or ?: tcp, udp, sctp, none, or ? for anything else (docs/keepalived.md)
#   VS_ID        FWM [0-9]+ | [ADDR]:PORT | [ADDR]:PROTO:PORT
# ASCII digits only ([0-9], not str.isdigit): "١٠٠" is not a number keepalived prints.
_DIGITS = "0123456789"
_STATE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_PROTO_CHARS = "abcdefghijklmnopqrstuvwxyz"


def _made_of(text: str, chars: str) -> bool:
    """`text` is one or more of `chars`."""
    return bool(text) and not text.strip(chars)


def _word(text: str) -> bool:
    """One or more characters, none of them whitespace."""
    return text.split() == [text]


def _control(text: str) -> int:
    """The index of the first C0 control, DEL or C1 control in `text` (-1: none): never in
    keepalived's C strings; tab, CR, NUL break the journal or argv/env.  (Other Unicode whitespace
    cannot reach a field: the fields exclude it.)"""
    if text.isprintable():  # (none of them is printable: the common case in one C loop)
        return -1
    for at, char in enumerate(text):
        if char < " " or "\x7f" <= char <= "\x9f":
            return at
    return -1


def _bracketed(text: str, protocol: bool | None) -> bool:
    """`text` is [ADDR]:PORT (`protocol` False), [ADDR]:PROTO:PORT (True) or either (None)."""
    close = text.find("]")
    if not text.startswith("[") or close < 0 or not _word(text[1:close]) or text[close + 1:close + 2] != ":":
        return False
    parts = text[close + 2:].split(":")
    if len(parts) == 2 and protocol is not False:
        return (parts[0] == "?" or _made_of(parts[0], _PROTO_CHARS)) and _made_of(parts[1], _DIGITS)
    return len(parts) == 1 and protocol is not True and _made_of(parts[0], _DIGITS)


def _virtual_server(text: str) -> bool:
    """`text` is a VS_ID: "[addr]:proto:port", "[group]:port" or "FWM n" (the one with a space)."""
    if text.startswith("FWM "):
        return _made_of(text[4:], _DIGITS)
    return _bracketed(text, None)


def _server_and_state(text: str) -> tuple[str, str] | None:
    """`VS_ID STATE` -> (VS_ID, STATE); None if `text` is not that.  A state holds no space, so the
    last one separates them."""
    server, space, state = text.rpartition(" ")
    return (server, state) if space and _virtual_server(server) and _made_of(state, _STATE_CHARS) else None


class Event(Value):
    """A state change as keepalived reported it.  `vs` is set only for RS lines."""

    __slots__ = ("type", "name", "state", "priority", "vs")

    def __init__(self, type: str, name: str, state: str, priority: int = 0, vs: str = "") -> None:
        self.type, self.name, self.state, self.priority, self.vs = type, name, state, priority, vs

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


class Rejected(Value):
    """A line that is not an event, kept so the log can say exactly what arrived and why it was skipped."""

    __slots__ = ("raw", "reason")

    def __init__(self, raw: bytes, reason: str) -> None:
        self.raw, self.reason = raw, reason

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
    control = _control(text)
    if control >= 0:
        return Rejected(raw, f"control character 0x{ord(text[control]):02x} at character {control}: "
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
    kind, _, rest = text.partition(" ")
    close = rest.find('"', 1)
    name, words = rest[1:close], rest[close + 1:].split(" ")
    if not (rest.startswith('"') and close > 0 and _word(name) and len(words) == 3 and not words[0]
            and _made_of(words[1], _STATE_CHARS) and _made_of(words[2].removeprefix("-"), _DIGITS)):
        return Rejected(raw, 'malformed VRRP line (expected: TYPE "NAME" STATE PRIORITY)')
    return Event(kind, name, words[1], int(words[2]))


def _parse_checker(raw: bytes, text: str, kind: str) -> Event | Rejected:
    rest = text[len(kind) + 1:] if text.startswith(f"{kind} ") else ""
    if kind == "VS":
        found = _server_and_state(rest)
        if found is None:
            return Rejected(raw, "malformed VS line (expected: VS <virtual server> STATE)")
        return Event("VS", *found)
    real, _, rest = rest.partition(" ")
    found = _server_and_state(rest) if _bracketed(real, True) else None
    if found is None:
        return Rejected(raw, "malformed RS line (expected: RS <real server> <virtual server> STATE)")
    return Event("RS", real, found[1], vs=found[0])
