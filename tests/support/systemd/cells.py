"""The compatibility matrix: which Debian release is booted, and how the launcher is installed there.

A cell is a release (its keepalived, systemd and Python, all Debian's own) and an install way:

  venv  the project pip-installed into /opt/notify-launcher/venv (the release's python3 -m venv),
        offline, from wheels downloaded on the host for that Python (rootfs.ensure_wheels)
  deb   dist/notify-launcher_<version>_all.deb, built by `sh scripts/build-deb` on the host and put
        in with `apt-get install ./…deb` (chroot, before the boot): its dependencies come from the
        release's own archive and nowhere else

MATRIX is what CI proves (tests/test_matrix.py, the README's support table); NL_SYSTEMD_CELLS
(e.g. `trixie-venv,bookworm-deb`) runs other cells instead, by hand.  DEFAULT is the cell of the
launcher-behaviour scenarios (tests/test_systemd.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

Install = Literal["venv", "deb"]
INSTALLS: tuple[Install, ...] = ("venv", "deb")
VENV = "/opt/notify-launcher/venv"  # where the venv install puts the project


@dataclass(frozen=True)
class Release:
    """A Debian release as the matrix expects it: its versions are checked in the booted system,
    so a cell that passes proves exactly these (a point release changing them fails loudly)."""

    suite: str
    number: int
    keepalived: str  # `keepalived -v` says "Keepalived v<this>"
    python: str  # /usr/bin/python3's major.minor
    # keywords of keepalived.conf.example this keepalived does not know: it logs "Unknown keyword"
    # and ignores them (`keepalived -t` too, exit 0), and nothing else may be said
    unknown: tuple[str, ...] = ()
    # a suite named by its role (testing): the codename it has now, which /etc/debian_version names
    codename: str = ""
    # False: the archive's Release files may be past their Valid-Until (testing's are valid for a
    # week, so a frozen mirror's expire), and apt in this release's root is told to accept them
    check_valid_until: bool = True

    @property
    def debian_version(self) -> str:
        """What /etc/debian_version starts with: "12." in bookworm, "forky/sid" in testing."""
        return f"{self.codename}/sid" if self.codename else f"{self.number}."

    def __str__(self) -> str:
        if self.codename:
            return f"Debian {self.suite} ({self.codename}, to be {self.number})"
        return f"Debian {self.number} {self.suite}"


BULLSEYE = Release("bullseye", 11, "2.1.5", "3.9", unknown=("fifo_write_vrrp_states_on_reload",))
BOOKWORM = Release("bookworm", 12, "2.2.7", "3.11")
TRIXIE = Release("trixie", 13, "2.3.3", "3.13")
TESTING = Release("testing", 14, "2.3.4", "3.14", codename="forky", check_valid_until=False)
RELEASES = {r.suite: r for r in (BULLSEYE, BOOKWORM, TRIXIE, TESTING)}


@dataclass(frozen=True)
class Cell:
    release: Release
    install: Install

    @property
    def name(self) -> str:
        return f"{self.release.suite}-{self.install}"

    @property
    def launcher(self) -> str:
        """The console script keepalived.conf names in this cell."""
        return f"{VENV}/bin/notify-launcher" if self.install == "venv" else "/usr/bin/notify-launcher"

    def __str__(self) -> str:
        return f"{self.release} ({self.install})"


MATRIX = (Cell(BULLSEYE, "venv"), Cell(BOOKWORM, "deb"), Cell(TRIXIE, "deb"), Cell(TESTING, "deb"))
DEFAULT = Cell(BOOKWORM, "venv")


def parse(name: str) -> Cell:
    """`bookworm-deb` -> that Cell (the harness's --cell option)."""
    suite, _, install = name.partition("-")
    if suite not in RELEASES or install not in INSTALLS:
        raise ValueError(f"unknown cell {name!r}: expected RELEASE-INSTALL, RELEASE one of "
                         f"{', '.join(RELEASES)}, INSTALL one of {', '.join(INSTALLS)} (e.g. bookworm-deb)")
    return Cell(RELEASES[suite], "venv" if install == "venv" else "deb")


def matrix() -> tuple[Cell, ...]:
    """The cells tests/test_matrix.py runs: NL_SYSTEMD_CELLS (comma-separated names), else MATRIX."""
    names = [n.strip() for n in os.environ.get("NL_SYSTEMD_CELLS", "").split(",") if n.strip()]
    return tuple(parse(n) for n in names) if names else MATRIX
