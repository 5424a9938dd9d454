"""log.Troubles against a real Log writing a real file: what a recurring problem leaves in the log."""

from __future__ import annotations

import os
import re
from pathlib import Path

from support import VI_MASTER

from notify_launcher.log import Log, Troubles


def _lines(path: Path) -> list[str]:
    """The lines without their time stamp (the one part a test cannot know)."""
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ", "", line) for line in path.read_text().splitlines()]


def test_a_recurring_problem_is_logged_once_again_when_it_changes_and_its_end_once(tmp_path: Path) -> None:
    log = tmp_path / "log"
    troubles = Troubles(Log(str(log), "test"))
    troubles.recovered("journal")  # nothing was wrong: nothing to say
    for _ in range(3):
        troubles.report("journal", None, None, "cannot write the journal (No space left on device)")
    troubles.report("metrics", None, None, "cannot write the metrics file (Permission denied)")  # its own area
    troubles.report("journal", None, None, "cannot write the journal (Read-only file system)")
    for _ in range(2):
        troubles.recovered("journal")
        troubles.recovered("metrics", "metrics file written again")
    troubles.report("journal", None, None, "cannot write the journal (Read-only file system)")  # back again
    pid = os.getpid()
    assert _lines(log) == [
        f"test[{pid}] ERROR #- - | cannot write the journal (No space left on device)",
        f"test[{pid}] ERROR #- - | cannot write the metrics file (Permission denied)",
        f"test[{pid}] ERROR #- - | cannot write the journal (Read-only file system)",
        f"test[{pid}] INFO  #- - | journal: working again",
        f"test[{pid}] INFO  #- - | metrics file written again",
        f"test[{pid}] ERROR #- - | cannot write the journal (Read-only file system)",
    ]


def test_another_event_or_exception_is_logged_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    troubles = Troubles(Log(str(log), "test"))
    for seq in (5, 5, 6):
        troubles.report("progress", seq, VI_MASTER, "cannot record 'end'")
    for exc in (ValueError("bad"), ValueError("bad"), KeyError("gone")):
        try:
            raise exc
        except Exception as caught:
            troubles.report("loop", None, None, "loop: unexpected error", caught)
    lines, pid = _lines(log), os.getpid()
    assert lines[:3] == [f'test[{pid}] ERROR #5 INSTANCE "VI_1" MASTER 100 | cannot record \'end\'',
                         f'test[{pid}] ERROR #6 INSTANCE "VI_1" MASTER 100 | cannot record \'end\'',
                         f"test[{pid}] ERROR #- - | loop: unexpected error: ValueError: bad"]
    assert [line for line in lines if "unexpected error" in line] == [
        f"test[{pid}] ERROR #- - | loop: unexpected error: ValueError: bad",
        f"test[{pid}] ERROR #- - | loop: unexpected error: KeyError: 'gone'",
    ]
    assert sum(line.endswith("Traceback (most recent call last):") for line in lines) == 2, "one traceback each"


def test_pythons_own_warnings_and_ignored_exceptions_go_to_the_log(tmp_path: Path) -> None:
    """What Python would print on a worker's stderr (/dev/null): a warning, and an exception it can
    only ignore (an unclosed socket under -X dev), each a log line instead."""
    import subprocess
    import sys

    from support import ROOT

    log = tmp_path / "log"
    code = ("import socket, warnings\n"
            "from notify_launcher.log import Log, python_problems_to\n"
            f"log = Log({str(log)!r}, 'worker')\n"
            "python_problems_to(lambda: log)\n"
            "warnings.warn('an old call', DeprecationWarning)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "del s\n")
    res = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 2, lines
    assert "WARN  #- - | Python: DeprecationWarning: an old call (<string>:5)" in lines[0]
    assert "ERROR #- - | Python: Exception ignored in <socket.socket" in lines[1]
    assert "ResourceWarning: unclosed" in lines[1]


def test_one_call_is_one_line_whatever_the_message_holds(tmp_path: Path) -> None:
    """Newlines, CR, ESC, C1, DEL, Unicode line and format separators in a message are written as
    backslash escapes: the file gets exactly one line, with no control character in it."""
    path = tmp_path / "nl.log"
    log = Log(str(path), "worker")
    log.info(1, None, "a\nforged\r\x1b]0;t\x07\x9b\x7f\u2028\u202e\U000e0001\tz \\ é")
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith(
        "| a\\x0aforged\\x0d\\x1b]0;t\\x07\\x9b\\x7f\\u2028\\u202e\\U000e0001\\x09z \\ é\n"), text
