"""Imported at the start of every Python process that has this directory on PYTHONPATH (the stateful
test's readers, workers and their Python children): under libfaketime with
FAKETIME_DONT_FAKE_MONOTONIC=1 (the wall clock steps, the monotonic and boot clocks do not),
Debian's libfaketime 0.9.10 makes every time.sleep of Python >= 3.11 fail with EINVAL: Python sleeps
with clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which that libfaketime shifts by the fake
offset anyway (wolfcw/libfaketime#426).  select() is not shifted, so sleep waits on it instead.
Without libfaketime preloaded this changes nothing."""

import os
import select
import time

if "libfaketime" in os.environ.get("LD_PRELOAD", ""):
    def _sleep(seconds: float) -> None:
        """time.sleep on select(), to the monotonic deadline (a signal handler's return resumes it)."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([], [], [], left)

    time.sleep = _sleep  # type: ignore[assignment]  # (it takes a float, as every caller gives)
