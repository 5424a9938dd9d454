"""A wall clock the test can step while the launcher's processes run: libfaketime (Debian's
`faketime`, installed by scripts/setup) reading its offset from a file on every call.

Only the wall clock is faked (FAKETIME_DONT_FAKE_MONOTONIC): the launcher's decisions must not
depend on the wall clock, and the kernel's monotonic clock and /proc's start ticks cannot be
stepped by NTP or a resumed VM either.
"""

from __future__ import annotations

import glob
from pathlib import Path

#: The preloadable library, wherever the architecture's multiarch directory puts it (None: not installed).
LIBFAKETIME: str | None = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))), None)
#: Every Python process under the fake clock gets faketime/sitecustomize.py: in this mode Debian's
#: libfaketime makes time.sleep fail with EINVAL (that file says why), and a process that sleeps only
#: on a busy machine -- `notify-launcher wait` polling a worker still running -- then dies with exit 70.
SLEEP_FIX = str(Path(__file__).parent / "faketime")


class FakeClock:
    """`start()` sets it to the real time; `env()` (or `words()`, for `env`'s command line) goes into a
    process's environment (inherited by its children); `step("-2h")` moves every such process's wall
    clock from its next reading on."""

    def __init__(self, offset_file: Path) -> None:
        self.offset_file = offset_file

    def start(self) -> None:
        self.step("+0s")

    def env(self) -> dict[str, str]:
        assert LIBFAKETIME is not None, "libfaketime is not installed (Debian's faketime)"
        return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(self.offset_file),
                "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": SLEEP_FIX}

    def words(self) -> list[str]:
        return [f"{name}={value}" for name, value in self.env().items()]

    def step(self, offset: str) -> None:
        """An offset from the real time, as libfaketime reads it: "+10s", "-2h".  Written whole (a
        new file renamed over the old): every process reads the file at every clock call."""
        new = self.offset_file.with_suffix(".new")
        new.write_text(f"{offset}\n")
        new.rename(self.offset_file)
