"""log.Troubles against a real Log writing a real file: what a recurring problem leaves in the log."""

from __future__ import annotations

import os
import re
from pathlib import Path

from notify_launcher.events import Event
from notify_launcher.log import Log, Troubles

VI = Event("INSTANCE", "VI_1", "MASTER", 100)


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
        troubles.report("progress", seq, VI, "cannot record 'end'")
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
