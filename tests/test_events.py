"""The parser: every format keepalived writes (KEEPALIVED.md, fifo-lines.txt), and junk as values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notify_launcher.events import MAX_LINE, VRRP_STATES, Event, Rejected, parse_line

# Lines seen from a real keepalived 2.2.7, and the VS/RS shapes from its source (shared/fifo-lines.txt).
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
    (b'INSTANCE "VI_1" SLEEPY 100', "unknown state 'SLEEPY'"),
    (b'INSTANCE "VI_1" MASTER 300', "priority 300 outside 0..255"),
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
