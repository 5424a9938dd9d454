"""The parser: every format keepalived writes (docs/keepalived.md), junk as values, and the
input policy (docs/architecture.md "What the reader accepts") checked against arbitrary bytes."""

from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import HealthCheck, event as note, given, settings
from hypothesis import strategies as st

from notify_launcher.events import MAX_LINE, VRRP_STATES, Event, Rejected, parse_line, unforeseen
from notify_launcher.intake import pieces
from notify_launcher.journal import Entry, format_entry, parse_entry

# Lines seen from a real keepalived 2.2.7, and the VS/RS shapes from its source (docs/keepalived.md).
SEEN = [
    ('GROUP "G1" BACKUP 0', Event("GROUP", "G1", "BACKUP", 0)),
    ('INSTANCE "VI_1" BACKUP 100', Event("INSTANCE", "VI_1", "BACKUP", 100)),
    ('INSTANCE "VI_1" MASTER_PRIORITY 107', Event("INSTANCE", "VI_1", "MASTER_PRIORITY", 107)),
    ('INSTANCE "VI_1" STOP 150', Event("INSTANCE", "VI_1", "STOP", 150)),
    ("VS [10.0.0.10]:tcp:80 UP", Event("VS", "[10.0.0.10]:tcp:80", "UP")),
    ("VS [10.0.0.10]:tcp:80 DOWN", Event("VS", "[10.0.0.10]:tcp:80", "DOWN")),
    ("RS [192.168.1.11]:tcp:80 [10.0.0.10]:tcp:80 UP",
     Event("RS", "[192.168.1.11]:tcp:80", "UP", vs="[10.0.0.10]:tcp:80")),
    ("VS FWM 7 UP", Event("VS", "FWM 7", "UP")),
    ("RS [192.168.1.11]:tcp:0 FWM 7 DOWN", Event("RS", "[192.168.1.11]:tcp:0", "DOWN", vs="FWM 7")),
    ("VS [web_group]:80 UP", Event("VS", "[web_group]:80", "UP")),
    ("RS [fe80::1]:udp:53 [2001:db8::53]:udp:53 UP",
     Event("RS", "[fe80::1]:udp:53", "UP", vs="[2001:db8::53]:udp:53")),
]


@pytest.mark.parametrize("line,event", SEEN)
def test_every_keepalived_format(line: str, event: Event) -> None:
    assert parse_line(line.encode()) == event
    assert str(event) == line  # the log shows the line as keepalived wrote it


@pytest.mark.parametrize("state", sorted(VRRP_STATES))
def test_all_eight_vrrp_states(state: str) -> None:
    assert parse_line(f'INSTANCE "VI_1" {state} 100'.encode()) == Event("INSTANCE", "VI_1", state, 100)


def test_trailing_and_leading_nul_is_dropped() -> None:
    assert parse_line(b"VS FWM 7 UP\0") == Event("VS", "FWM 7", "UP")
    assert parse_line(b"\0VS FWM 7 UP") == Event("VS", "FWM 7", "UP")


def test_handler_arguments_follow_keepalived_notify_convention() -> None:
    assert Event("INSTANCE", "VI_1", "MASTER", 100).fields() == ["INSTANCE", "VI_1", "MASTER", "100"]
    rs = parse_line(b"RS [192.168.1.11]:tcp:0 FWM 7 DOWN")
    assert isinstance(rs, Event)
    assert rs.fields() == ["RS", "[192.168.1.11]:tcp:0", "DOWN", "0", "FWM 7"]


@pytest.mark.parametrize("raw,reason", [
    (b"", "empty line"),
    (b"\0\0", "empty line"),
    (b'INSTANCE "VI_0\0" MASTER 100', "control character 0x00 at character 14"),
    (b'INSTANCE "VI_0" MASTER 100\0\0x', "control character 0x00"),
    (b"VS [10.0.0.1\t]:tcp:80 UP", "control character 0x09"),
    (b"RS [192.168.1.11]:tcp:80 [10.0.0.1]:tcp:80\rUP", "control character 0x0d"),
    (b'INSTANCE "VI_1\x1b[31m" MASTER 100', "control character 0x1b"),
    (b'INSTANCE "VI_1\x7f" MASTER 100', "control character 0x7f"),
    ('INSTANCE "VI_1\x85" MASTER 100'.encode(), "control character 0x85"),
    (b'INSTANCE "VI_1" Sleepy 100', "malformed VRRP line"),
    (b'INSTANCE "VI_1" MASTER 1.5', "malformed VRRP line"),
    ('INSTANCE "VI_1" MASTER \u0661\u0660\u0660'.encode(), "malformed VRRP line"),
    (b"VS FWM 7 up", "malformed VS line"),
    (b'INSTANCE VI_1 MASTER 100', "malformed VRRP line"),
    (b'INSTANCE "VI 1" MASTER 100', "malformed VRRP line"),
    (b'INSTANCE "VI_1" MASTER', "malformed VRRP line"),
    (b"FOO bar", "unknown type 'FOO'"),
    (b"VS 10.0.0.1:80 UP", "malformed VS line"),
    (b"RS [1.1.1.1]:tcp:80 UP", "malformed RS line"),
    (b"\xff\xfe", "not UTF-8 (byte 0)"),
    (b"x" * (MAX_LINE + 1), f"line longer than {MAX_LINE} bytes"),
])
def test_bad_lines_are_values_with_reasons(raw: bytes, reason: str) -> None:
    result = parse_line(raw)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(reason)


def test_rejected_line_is_shown_printable_and_cut() -> None:
    shown = Rejected(b"\x01ab\xff" + b"z" * 500, "x").shown()
    assert shown.startswith("\\x01ab\\xff") and shown.endswith("...") and len(shown) < 140


@given(st.binary(max_size=300))
def test_any_bytes_give_a_value_never_an_exception(raw: bytes) -> None:
    assert isinstance(parse_line(raw), (Event, Rejected))


@given(st.sampled_from(["INSTANCE", "GROUP"]), st.from_regex(r'[A-Za-z0-9_.:-]{1,30}', fullmatch=True),
       st.sampled_from(sorted(VRRP_STATES)), st.integers(0, 255))
def test_vrrp_round_trip(kind: str, name: str, state: str, prio: int) -> None:
    event = Event(kind, name, state, prio)
    assert parse_line(str(event).encode()) == event


@pytest.mark.parametrize("line,event,news", [
    (b'INSTANCE "VI_1" MASTER 100\0', Event("INSTANCE", "VI_1", "MASTER", 100), None),
    (b'INSTANCE "VI_1" SLEEPY 100', Event("INSTANCE", "VI_1", "SLEEPY", 100), "unknown state 'SLEEPY'"),
    (b'GROUP "G1" MASTER 300', Event("GROUP", "G1", "MASTER", 300), "priority 300 outside 0..255"),
    (b'INSTANCE "VI_1" MASTER -1', Event("INSTANCE", "VI_1", "MASTER", -1), "priority -1 outside 0..255"),
    (b"VS FWM 7 WARMING_UP", Event("VS", "FWM 7", "WARMING_UP"), "unknown state 'WARMING_UP' (VS line)"),
    (b"RS [192.168.1.11]:tcp:80 [10.0.0.1]:tcp:80 DRAIN",
     Event("RS", "[192.168.1.11]:tcp:80", "DRAIN", vs="[10.0.0.1]:tcp:80"), "unknown state 'DRAIN' (RS line)"),
    ('INSTANCE "VI_é" BACKUP 0'.encode(), Event("INSTANCE", "VI_é", "BACKUP", 0), None),
])
def test_unforeseen_values_run_like_any_event(line: bytes, event: Event, news: str | None) -> None:
    """A future keepalived's state word or an odd priority is an event (its action runs), and
    `unforeseen` names the new word for the reader's one warning."""
    assert parse_line(line) == event
    said = unforeseen(event)
    assert said == news if news is None else said is not None and said.startswith(news)


def test_both_unforeseen_values_are_named_and_the_readers_own_events_are_not() -> None:
    assert unforeseen(Event("INSTANCE", "VI_1", "SLEEPY", 300)) == (
        "unknown state 'SLEEPY' (INSTANCE line); priority 300 outside 0..255")
    assert unforeseen(Event("READER", "reader", "STOP")) is None


# Lines of keepalived's shapes with arbitrary bytes in their fields (so that many are accepted and the
# policy is tried on names, addresses, states and priorities nobody wrote down), and plain junk.
_ANY = st.one_of(st.binary(min_size=1, max_size=16), st.text(min_size=1, max_size=16).map(str.encode),
                 st.text(st.characters(max_codepoint=0xff, exclude_characters=' "]'), min_size=1,
                         max_size=16).map(str.encode),  # Latin-1 and C0/C1 controls: often a field
                 st.from_regex(rb"[A-Za-z0-9_.:-]{1,16}", fullmatch=True))
_STATE = st.one_of(st.sampled_from([b"MASTER", b"UP", b"DOWN"]), st.from_regex(rb"[A-Z_]{1,12}", fullmatch=True),
                   _ANY)
_PRIO = st.one_of(st.integers(-10**12, 10**12).map(lambda n: str(n).encode()), st.just(b"007"), _ANY)
_ADDR = st.builds(lambda a, p: b"[%s]:tcp:%s" % (a, p), _ANY, st.sampled_from([b"80", b"0"]))
_VS = st.one_of(_ADDR, st.just(b"FWM 7"), st.builds(lambda a: b"[%s]:80" % a, _ANY))
_LINES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda k, n, s, p: b'%s "%s" %s %s' % (k, n, s, p),
              st.sampled_from([b"INSTANCE", b"GROUP"]), _ANY, _STATE, _PRIO),
    st.builds(lambda v, s: b"VS %s %s" % (v, s), _VS, _STATE),
    st.builds(lambda r, v, s: b"RS %s %s %s" % (r, v, s), _ADDR, _VS, _STATE),
)
_FRAMED = st.builds(lambda pre, line, post: b"\0" * pre + line + b"\0" * post,
                    st.integers(0, 2), _LINES, st.integers(0, 2))


def _is_control(c: str) -> bool:
    return ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_FRAMED)
def test_accepted_events_survive_the_journal_and_the_spawn(raw: bytes) -> None:
    """Whatever bytes arrive: an accepted event comes back from the journal exactly as it went in, has
    no control character in any field, re-parses from its log form, and can be a process's argv and
    environment (an embedded NUL made every worker die at spawn)."""
    event = parse_line(raw)
    note("accepted" if isinstance(event, Event) else "rejected")
    if isinstance(event, Rejected):
        return
    entry = Entry(12, 1764000000.25, 4242, event)
    line = format_entry(entry)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.count(b"\t") == 9
    assert parse_entry(line[:-1]) == entry
    assert not any(_is_control(c) for field in event.fields() for c in field), event.fields()
    assert parse_line(str(event).encode()) == event
    env = {"NL_TYPE": event.type, "NL_NAME": event.name, "NL_STATE": event.state,
           "NL_PRIORITY": str(event.priority), "NL_VS": event.vs}
    assert subprocess.run(["/bin/true", *event.fields()], env=env, check=False).returncode == 0


def test_a_protocol_keepalived_prints_as_question_mark_is_accepted() -> None:
    """keepalived writes `?` for a protocol it has no name for (docs/keepalived.md)."""
    rs = parse_line(b"RS [192.168.1.11]:?:80 [10.0.0.1]:?:80 DOWN")
    assert isinstance(rs, Event) and rs.name == "[192.168.1.11]:?:80" and rs.vs == "[10.0.0.1]:?:80"
    vs = parse_line(b"VS [10.0.0.1]:?:80 UP")
    assert isinstance(vs, Event) and vs.name == "[10.0.0.1]:?:80"


# The grammar as regular expressions (the parser reads it with str methods, events.py): every
# field matched whole; \s is str.isspace's whitespace, [0-9] ASCII digits only.
_RE_STATE = r"([A-Z_]+)"
_RE_VS = r"(?:FWM [0-9]+|\[[^\]\s]+\](?::(?:[a-z]+|\?))?:[0-9]+)"
_RE_RS = r"\[[^\]\s]+\]:(?:[a-z]+|\?):[0-9]+"
_GRAMMAR = {"INSTANCE": re.compile(rf'INSTANCE "([^"\s]+)" {_RE_STATE} (-?[0-9]+)'),
            "GROUP": re.compile(rf'GROUP "([^"\s]+)" {_RE_STATE} (-?[0-9]+)'),
            "VS": re.compile(rf"VS ({_RE_VS}) {_RE_STATE}"),
            "RS": re.compile(rf"RS ({_RE_RS}) ({_RE_VS}) {_RE_STATE}")}


def _by_the_grammar(text: str) -> Event | None:
    kind = text.split(" ", 1)[0]
    m = _GRAMMAR[kind].fullmatch(text) if kind in _GRAMMAR else None
    if m is None:
        return None
    if kind in ("INSTANCE", "GROUP"):
        return Event(kind, m.group(1), m.group(2), int(m.group(3)))
    return Event("VS", m.group(1), m.group(2)) if kind == "VS" else Event("RS", m.group(1), m.group(3), vs=m.group(2))


# Lines of the grammar's shape, each piece often a near miss: other whitespace, doubled or missing
# spaces, non-ASCII digits and letters, quotes and brackets inside a field.
def _field(*pieces: str) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), min_size=1, max_size=3).map("".join)


_SEP = st.sampled_from([" ", " ", " ", " ", "  ", "", "\u00a0", "\u3000"])
_NAME = _field("VI_1", "a", "É", "\U0001f600", "\u200b", "\ufeff", "\u00a0", "\u2003", " ", '"', "]", "[", ":", "")
_STATE_W = _field("MASTER", "UP", "_", "Z", "a", "É", "ß", " ", "")
_DIGITS_W = _field("100", "0", "7", "-", "١٠", "²", " ", "")
_PROTO = _field("tcp", "udp", "?", "??", "TCP", "", "é")
_BRACKET = st.builds(lambda n, c1, p, c2, d: f"[{n}]{c1}{p}{c2}{d}", _NAME, st.sampled_from([":", "", "::"]), _PROTO,
                     st.sampled_from([":", "", "::"]), _DIGITS_W)
_VS_W = st.one_of(_BRACKET, st.builds(lambda s, d: f"FWM{s}{d}", _SEP, _DIGITS_W))
_GRAMMAR_LINES = st.one_of(
    st.builds(lambda k, a, n, b, s, c, p: f'{k}{a}"{n}"{b}{s}{c}{p}', st.sampled_from(["INSTANCE", "GROUP", "VS"]),
              _SEP, _NAME, _SEP, _STATE_W, _SEP, _DIGITS_W),
    st.builds(lambda a, v, b, s: f"VS{a}{v}{b}{s}", _SEP, _VS_W, _SEP, _STATE_W),
    st.builds(lambda a, r, b, v, c, s: f"RS{a}{r}{b}{v}{c}{s}", _SEP, _BRACKET, _SEP, _VS_W, _SEP, _STATE_W))


@settings(max_examples=3000)
@given(_GRAMMAR_LINES)
def test_the_parser_accepts_exactly_the_grammar(text: str) -> None:
    """parse_line accepts a line the grammar's regular expressions match, and reads the same fields
    from it; any other line is Rejected."""
    expected = _by_the_grammar(text)
    got = parse_line(text.encode())
    note("accepted" if expected is not None else "rejected")
    if expected is None:
        assert isinstance(got, Rejected), (text, got)
    else:
        assert got == expected, (text, got)


@pytest.mark.parametrize("line", ['INSTANCE "VI 1" MASTER 100', 'INSTANCE "VI_1"  MASTER 100', 'INSTANCE "" MASTER 1',
                                  'INSTANCE "VI_1" MASTER 1 ', 'INSTANCE "VI\u00a01" MASTER 100', "VS [a]:tcp:8\u0660 UP",
                                  'INSTANCE "VI_1" MASTER -', 'INSTANCE "VI_1" MASTER --1', "VS [a b]:80 UP",
                                  "VS [a]]:80 UP", "VS []:80 UP", "VS [a]:TCP:80 UP", "VS [a]:tcp:udp:80 UP",
                                  "VS FWM  7 UP", "VS FWM 7  UP", "VS [a]:80", "RS [a]:80 [b]:80 UP",
                                  "RS [a]:tcp:80  [b]:80 UP", "RS [a]:tcp:80 FWM x UP", "GROUP \"G\" master 1"])
def test_near_misses_of_the_grammar_are_rejected(line: str) -> None:
    assert _by_the_grammar(line) is None and isinstance(parse_line(line.encode()), Rejected)


_LINE_START = re.compile(rb'INSTANCE "|GROUP "|VS |RS ')


@settings(max_examples=500)
@given(st.lists(st.one_of(_GRAMMAR_LINES.map(str.encode), st.sampled_from([b"INSTANCE \"", b"GROUP \"", b"VS ", b"RS ",
                                                                          b"x", b"S ", b"RRS ", b"\0"])),
                max_size=4).map(b"".join))
def test_a_rejected_line_is_cut_before_the_line_keepalived_wrote_at_its_end(raw: bytes) -> None:
    """intake.pieces cuts at the first place (after the first byte) where a line of the grammar
    starts and runs to the end, as searching for the lines' starts with a regular expression does."""
    cut = next((m.start() for m in _LINE_START.finditer(raw, 1) if isinstance(parse_line(raw[m.start():]), Event)), None)
    assert pieces(raw) == ([raw] if cut is None else [raw[:cut], raw[cut:]])
