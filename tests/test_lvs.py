"""LVS sites: keepalived's VRRP and checker children write one FIFO, and one of them starts the
reader (docs/keepalived.md, "LVS sites"), driven through the two-children stand-in
(support.standin.TwoChildren): the checker restarting alone, a reload of both, a stop of both.

Each test asserts the launcher's promise for this case: every line written is journaled and run
exactly once, each child's lines in the order it wrote them, and `stop_action` (the recorder here,
so it leaves a record) runs exactly once per real stop, never for a restart or a reload.  A real
keepalived with virtual servers needs IPVS, which these kernels lack: tests/test_real_keepalived.py
runs the checker with `--all` instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from support.invariants import check_run
from support.launcher import Launcher
from support.standin import TwoChildren

VRRP_STOP = ['INSTANCE "VI_1" STOP 100', 'GROUP "G1" STOP 0']
CHECKER_STOP = ["RS [192.168.1.11]:tcp:80 [10.0.0.10]:tcp:80 DOWN", "VS [10.0.0.10]:tcp:80 DOWN"]


class Site:
    """A launcher behind the two-children stand-in, and what each child wrote, in order."""

    def __init__(self, launcher: Launcher, owner: str) -> None:
        self.launcher = launcher
        ini = launcher.dir / "nl.ini"
        ini.write_text(f"[launcher]\nstop_action = {launcher.handler}\n")
        launcher.extra_args = ["--config", str(ini)]
        self.ka = TwoChildren(launcher.argv(), str(launcher.fifo), owner)
        self.written: dict[str, list[str]] = {"vrrp": [], "checker": []}
        self.n = 0

    def write(self, child: str, count: int = 3) -> None:
        for _ in range(count):
            self.n += 1
            line = (f'INSTANCE "VI_{self.n}" MASTER 100' if child == "vrrp"
                    else f"RS [192.168.1.{self.n}]:tcp:80 [10.0.0.10]:tcp:80 UP")
            assert self.ka.write(child, line), "the pipe was full"
            self.written[child].append(line)

    def journaled(self) -> int:
        """Events journaled so far (keepalived's and the readers' own)."""
        return self.launcher.last_seq()

    def wait_journaled(self, events: int) -> None:
        self.launcher.wait_for(f"{events} events journaled", lambda: self.journaled() >= events)

    def reader_events(self) -> list[str]:
        """The READER events journaled, in order (RELOAD, STOP, EOF)."""
        return re.findall(r'#\d+ READER reader (\w+) \| received', self.launcher.log_text())

    def check(self, stops: int) -> None:
        """0 lost, 0 duplicated, each child's order kept, `stop_action` exactly `stops` times, and
        the recorder's actions one at a time in journal order: the invariant checker
        (support.invariants) once per child, with that child's lines in the order it wrote them
        (the two children's lines have no order between them), then the same facts counted here."""
        self.launcher.wait_idle()
        for lines in self.written.values():
            check_run(self.launcher.state, self.launcher.dir, self.launcher.log, expect_lines=lines, stops=stops)
        starts = self.launcher.starts()
        ran = [" ".join(r.args) for r in starts]
        for child, lines in self.written.items():
            mine = [a for a in ran if a.split()[0] in (("INSTANCE", "GROUP") if child == "vrrp" else ("VS", "RS"))]
            expected = [_args(line) for line in lines]
            assert mine == expected, (child, mine, expected, self.launcher.log_text()[-3000:])
        assert ran.count("READER reader STOP 0") == stops, ran
        seqs = [r.seq or 0 for r in starts]  # the launcher always sets NL_SEQ
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


def _args(line: str) -> str:
    """The arguments the handler gets for a FIFO line (README, "The action (handler) contract")."""
    words = line.split()
    if words[0] == "RS":
        return f"RS {words[1]} {words[3]} 0 {words[2]}"
    if words[0] == "VS":
        return f"VS {words[1]} {words[2]} 0"
    return f"{words[0]} {words[1].strip(chr(34))} {words[2]} {words[3]}"


@pytest.fixture(params=["checker", "vrrp"], ids=["global-fifo-checker-owns", "vrrp-owns"])
def site(request: pytest.FixtureRequest, launcher: Launcher) -> Iterator[Site]:
    s = Site(launcher, request.param)
    try:
        yield s
    finally:
        s.ka.close()


def _stop(site: Site) -> None:
    site.ka.stop(VRRP_STOP, CHECKER_STOP)
    site.written["vrrp"] += VRRP_STOP
    site.written["checker"] += CHECKER_STOP


def test_checker_restart_alone_is_no_stop(site: Site) -> None:
    """The checker crashes, twice, and keepalived starts it again each time.  Owning the reader, its
    death sends the reader SIGTERM (parent death), without EOF or STOP lines: the reader journals
    RELOAD, runs no stop_action, and the lines the VRRP child writes before the new reader starts
    wait in the pipe for it.  Not owning it, the reader does not notice.  (The second crash: the
    worker is then older than the reader, so no process looks like a next reader started after it.)"""
    site.ka.start()
    site.launcher.wait_started()
    first = site.ka.scripts()[-1]
    site.write("vrrp")
    site.write("checker")
    site.wait_journaled(6)
    owner = site.ka.owner == "checker"
    for crash in (1, 2):
        site.ka.crash("checker")
        site.write("vrrp")
        site.write("checker")
        site.wait_journaled(6 * (crash + 1) + owner * crash)
    if owner:
        assert site.ka.scripts()[-1] != first
        assert site.reader_events() == ["RELOAD", "RELOAD"], site.launcher.log_text()[-3000:]
        assert site.launcher.log_text().count("which started this reader, is gone while keepalived") == 2
    else:
        assert site.ka.scripts()[-1] == first and site.reader_events() == []
    _stop(site)
    site.check(stops=1)
    assert site.reader_events()[-1] == "STOP"


def test_reload_of_both_is_no_stop(site: Site) -> None:
    """SIGHUP: both children reopen the FIFO (the same one: made before keepalived), the owner
    starts the next reader; the old one sees no EOF and leaves to it as a RELOAD."""
    site.ka.start()
    site.launcher.wait_started()
    site.write("vrrp")
    site.write("checker")
    site.wait_journaled(6)
    site.ka.reload()
    site.write("checker")
    site.write("vrrp")
    site.wait_journaled(13)
    assert site.reader_events() == ["RELOAD"], site.launcher.log_text()[-3000:]
    _stop(site)
    site.check(stops=1)


def test_stop_of_both_runs_stop_action_once_after_every_stop_line(site: Site) -> None:
    """SIGTERM: the owner stops the reader; VRRP writes its STOP lines and the checker its DOWN lines,
    each on its own; all are journaled before READER STOP, whose stop_action runs once."""
    site.ka.start()
    site.launcher.wait_started()
    site.write("vrrp", 1)
    site.write("checker", 1)
    site.wait_journaled(2)
    _stop(site)
    site.check(stops=1)
    ran = [" ".join(r.args) for r in site.launcher.starts()]
    assert ran[-1] == "READER reader STOP 0", ran


def test_vrrp_restart_is_no_stop_for_the_reader_it_owns(launcher: Launcher) -> None:
    """The README's form for LVS sites: the VRRP child owns the reader, and its crash and restart is
    what a checker's is for the global FIFO: RELOAD, no stop_action, no line lost."""
    site = Site(launcher, "vrrp")
    try:
        site.ka.start()
        site.launcher.wait_started()
        site.write("checker")
        site.wait_journaled(3)
        site.ka.crash("vrrp")
        site.write("checker")
        site.write("vrrp")
        site.wait_journaled(10)
        assert site.reader_events() == ["RELOAD"], site.launcher.log_text()[-3000:]
        _stop(site)
        site.check(stops=1)
    finally:
        site.ka.close()
