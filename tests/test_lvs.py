"""LVS sites: keepalived's VRRP and checker children write one FIFO, and one of them starts the
reader (docs/keepalived.md, "LVS sites"), driven through the two-children stand-in
(support.standin.TwoChildren): the checker restarting alone, a reload of both, a stop of both.

Each test asserts the launcher's promise for this case: every line written is journaled and run
exactly once, each child's lines in the order it wrote them, and `stop_action` (the recorder here,
so it leaves a record) runs exactly once per real stop, never for a restart or a reload.  A real
keepalived with virtual servers needs IPVS, which these kernels lack: tests/test_real_keepalived.py
runs the checker with `--all` instead; the tests at the end run it here too, in a network
namespace (tests/support/realka.py).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from support import processes
from support.invariants import check_run
from support.launcher import Launcher
from support.realka import Cluster, Node
from support.standin import TwoChildren
from test_real_keepalived import _reader_events, _reader_other_than

VRRP_STOP = ['INSTANCE "VI_1" STOP 100', 'GROUP "G1" STOP 0']
CHECKER_STOP = ["RS [192.168.1.11]:tcp:80 [10.0.0.10]:tcp:80 DOWN", "VS [10.0.0.10]:tcp:80 DOWN"]


class Site:
    """A launcher behind the two-children stand-in, and what each child wrote, in order."""

    def __init__(self, launcher: Launcher, owner: str) -> None:
        self.launcher = launcher
        launcher.stop_action()
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
    """keepalived's stop, once its newest reader catches SIGTERM: one still in its Python start-up dies
    unlogged, a stated limit (docs/invariants.md, "Before the reader catches SIGTERM") that only
    test_stop_while_the_owner_restarts_journals_the_stop means to hit.  (A busy CI machine: a stop
    right after a restart's lines were journaled, by the old reader, found the next one importing.)"""
    site.launcher.wait_for("the newest reader to catch SIGTERM",
                           lambda: processes.catches_sigterm(site.ka.scripts()[-1]))
    _stop_now(site)


def _stop_now(site: Site) -> None:
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


def _no_stop_until_the_real_one(site: Site, first: int) -> None:
    """After the owner's crash: both children's lines are journaled (by either reader), the `first`
    reader leaves without a READER STOP, and keepalived's real stop journals exactly one."""
    site.write("vrrp")
    site.write("checker")
    site.launcher.wait_started()
    site.wait_journaled(6)
    site.launcher.wait_for("the first reader gone", lambda: not processes.running(first))
    assert "STOP" not in site.reader_events(), site.launcher.log_text()[-3000:]
    _stop(site)
    site.check(stops=1)


def test_owner_crash_while_its_reader_starts_is_a_restart(site: Site) -> None:
    """The owner child crashes while its reader is still starting (held with SIGSTOP after cli noted
    its starter, so the moment is deterministic), and is reaped and started again, with the next
    reader, before that reader looks at it: the reader still knows its starter and keepalived's main
    process from cli's early look-up, so the parent-death SIGTERM is a restart (RELOAD), not a stop:
    no READER STOP and no stop_action until keepalived really stops."""
    site.ka.start()
    first = site.ka.scripts()[-1]
    site.launcher.wait_for("the reader to catch SIGTERM", lambda: processes.catches_sigterm(first))
    os.kill(first, signal.SIGSTOP)
    site.ka.crash(site.ka.owner)
    os.kill(first, signal.SIGCONT)
    _no_stop_until_the_real_one(site, first)
    assert site.reader_events()[-1] == "STOP"


@pytest.mark.parametrize("delay", [0.03, 0.05, 0.07, 0.09])
def test_checker_crash_shortly_after_it_started_its_reader_is_no_stop(launcher: Launcher, delay: float) -> None:
    """The same unheld: the checker (owning the global FIFO's reader) crashes `delay` s after it
    started the reader, inside or just after the reader's start-up, and keepalived starts it again at
    once.  No READER STOP once the first reader is gone; one STOP at the real stop."""
    site = Site(launcher, "checker")
    try:
        site.ka.start()
        first = site.ka.scripts()[-1]
        time.sleep(delay)  # the moment of the crash is the parameter, not a wait for something
        site.ka.crash("checker")
        _no_stop_until_the_real_one(site, first)
    finally:
        site.ka.close()


def test_repeated_fast_crashes_of_the_owner_are_no_stop(site: Site) -> None:
    """The owner crashes five times, each right after its reader logged its start: every reader
    leaves to the next one as a RELOAD; no line lost or twice; one STOP at the real stop."""
    site.ka.start()
    started = 0  # readers seen starting so far: counted before each crash, so a fast respawn is not missed
    for _ in range(5):
        site.launcher.wait_for("a reader started",
                               lambda b=started: site.launcher.log_text().count("reader started") > b)
        started = site.launcher.log_text().count("reader started")
        site.ka.crash(site.ka.owner)
        site.write("vrrp", 2)
        site.write("checker", 2)
    last = site.ka.scripts()[-1]
    site.wait_journaled(20 + 5)  # every line, and a RELOAD per crash
    site.launcher.wait_for("every earlier reader gone, the last one started",
                           lambda: all(not processes.running(pid) for pid in site.ka.scripts() if pid != last)
                           and f"reader[{last}] INFO  #- - | reader started" in site.launcher.log_text())
    assert "STOP" not in site.reader_events(), site.reader_events()
    _stop(site)
    site.check(stops=1)
    assert site.reader_events()[-1] == "STOP", site.reader_events()


@pytest.mark.xfail(strict=False, reason="a stated limit (docs/invariants.md, \"Before the reader catches "
                   "SIGTERM\"): a SIGTERM in the new reader's Python start-up, before cli installs its "
                   "early handler, kills it unlogged: no READER STOP, no stop_action, its STOP lines unread. "
                   "Not strict: on a slow or busy machine the stop may land after the handler (then it passes)")
def test_stop_while_the_owner_restarts_journals_the_stop(site: Site) -> None:
    """The owner crashes and keepalived stops while the next reader is still starting up (Python
    importing): the stop should still journal the STOP lines and one READER STOP."""
    site.ka.start()
    site.launcher.wait_started()
    site.write("vrrp")
    site.write("checker")
    site.wait_journaled(6)
    site.ka.crash(site.ka.owner)
    site.write("vrrp")
    _stop_now(site)
    site.check(stops=1)
    assert site.reader_events()[-1] == "STOP", site.reader_events()


@pytest.mark.parametrize("attempt", range(8))
def test_sigterm_right_after_reader_started_is_honoured(launcher: Launcher, attempt: int) -> None:
    """keepalived stops the reader right after it logged `reader started`, while the reader still
    builds itself: a SIGTERM caught by cli's early handler is read only after the reader's own
    handler is installed, so none falls between the two; the reader catches the STOP line, journals
    READER STOP and leaves before keepalived's SIGKILL.  (The window is a few ms: several of the
    eight attempts land in it.)"""
    k = launcher.keepalived()
    k.start()
    deadline = time.monotonic() + 10
    while not (launcher.log.exists() and b"reader started" in launcher.log.read_bytes()):
        assert time.monotonic() < deadline  # polled without a pause: the moment is a few ms wide
    report = k.stop(['INSTANCE "VI_1" STOP 100'])
    assert not report.killed, "the reader ignored keepalived's SIGTERM and was SIGKILLed at +1 s"
    launcher.check()


def _burst(fifo: str, lines: list[str], pause: float, dropped: list[str], halfway: threading.Event) -> None:
    """Write `lines`, `pause` s apart, with one non-blocking write each (as keepalived: a full pipe
    drops the line); after the first half, wait for `halfway` (the test's reload)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        for n, line in enumerate(lines):
            if n == len(lines) // 2:
                halfway.wait(60)
            try:
                os.write(fd, (line + "\n").encode())
            except BlockingIOError:
                dropped.append(line)
            time.sleep(pause)  # the writer's pace: part of the scenario
    finally:
        os.close(fd)


def test_reload_during_a_burst_from_both_children_loses_nothing(site: Site) -> None:
    """Two writers (VRRP-like and checker-like) write 200 lines each, 1 ms apart, into the FIFO made
    before keepalived, which reloads in the middle (the owner starts the next reader on the same
    FIFO; the old one sees no EOF): each writer's lines journaled once each, in order.  The writers
    hold their second half until the reload is under way, so it comes mid-burst however slow the
    machine; the stop waits for the next reader's start (a SIGTERM in its Python start-up is a
    stated limit, docs/invariants.md)."""
    site.ka.start()
    site.launcher.wait_started()
    vrrp = [f'INSTANCE "B_{i}" MASTER 100' for i in range(200)]
    checker = [f"RS [192.168.2.{i % 250}]:tcp:{1000 + i} [10.0.0.10]:tcp:80 UP" for i in range(200)]
    dropped: list[str] = []
    reloading = threading.Event()
    writers = [threading.Thread(target=_burst, args=(site.ka.fifo, lines, 0.001, dropped, reloading))
               for lines in (vrrp, checker)]
    for w in writers:
        w.start()
    site.launcher.wait_for("the burst under way", lambda: site.launcher.log_text().count("| received") >= 20)
    site.ka.reload()
    reloading.set()
    for w in writers:
        w.join()
    assert not dropped
    site.written["vrrp"] += vrrp
    site.written["checker"] += checker
    site.launcher.wait_for("all journaled", lambda: site.launcher.log_text().count("| received") >= 401, timeout=30)
    site.launcher.wait_for("the next reader started", lambda: site.launcher.log_text().count("| reader started") == 2)
    _stop(site)
    site.check(stops=1)


# Real keepalived 2.2.7 with `--all` (its checker runs without IPVS) in a network namespace.

def _readers(node: Node) -> list[int]:
    """node's live readers on its FIFO, in keepalived's session (not a worker, not a `sh -c`)."""
    assert node.proc is not None
    session = os.getsid(node.proc.pid)
    out = []
    for p in psutil.Process(node.proc.pid).children(recursive=True):
        try:
            cmd = p.cmdline()
            if cmd[-1:] == [str(node.fifo)] and "notify_launcher" in cmd and os.getsid(p.pid) == session \
                    and p.status() != psutil.STATUS_ZOMBIE and p.parent().cmdline() != cmd:
                out.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return out


def _respawned(node: Node, which: str, old: int) -> int:
    """Wait until keepalived started its `which` child again (a pid file being written may be
    empty for a moment); its pid."""
    found: list[int] = []

    def new_child() -> bool:
        try:
            pid = node.child_pid(which)
        except (OSError, ValueError, IndexError):
            return False
        found[:] = [pid]
        return pid != old and os.path.exists(f"/proc/{pid}")
    node.wait_for(f"keepalived's {which} child again", new_child)
    return found[0]


def _one_new_reader(node: Node, old: set[int]) -> None:
    """Wait until exactly one reader runs, not one of `old`, and it logged its start."""
    def settled() -> bool:
        readers = _readers(node)
        return len(readers) == 1 and readers[0] not in old and f"reader[{readers[0]}] INFO  #- - | reader started" \
            in node.log_text()
    node.wait_for("one reader, the new one, started", settled)


@pytest.mark.parametrize("form", ["global", "vrrp+lvs"])
def test_owner_crash_right_after_its_reader_started_leaves_one_reader(
        real_cluster: Callable[..., Cluster], form: str) -> None:
    """The owner (the checker, under `sh -c`, for the global FIFO; the VRRP child, exec'd with a
    parent-death SIGTERM, for vrrp_ + lvs_notify_fifo on one path) is SIGKILLed three times, the
    last two right after its reader logged `reader started`.  Each old reader leaves to the next one
    (RELOAD): one reader remains, no STOP until keepalived stops, then exactly one."""
    c = real_cluster(checker=True, fifo_form=form)
    n1, _ = c.nodes
    c.start()
    c.wait_settled()
    which = "checker" if form == "global" else "vrrp"
    child = n1.child_pid(which)
    for crash in range(3):
        old = set(_readers(n1))
        started = n1.log_text().count("reader started")
        os.kill(child, signal.SIGKILL)
        child = _respawned(n1, which, child)
        if crash < 2:
            deadline = time.monotonic() + 10
            while n1.log.read_text().count("reader started") <= started:  # polled without a pause: hit the moment
                assert time.monotonic() < deadline
    _one_new_reader(n1, old)
    assert "STOP" not in _reader_events(n1), n1.diagnostics()
    n1.term()
    n1.wait_idle()
    assert _reader_events(n1).count("STOP") == 1, _reader_events(n1)
    check_run(n1.state, n1.dir, n1.log, stops=1)


@pytest.mark.parametrize("form", ["global", "vrrp+lvs"])
def test_owner_crash_while_its_reader_imports_is_a_restart(real_cluster: Callable[..., Cluster], form: str) -> None:
    """The owner child is SIGKILLed while its reader is still importing (held with SIGSTOP once cli
    noted its starter), and keepalived reaps and starts it again, with the next reader, before the
    held reader goes on.  The reader knows its starter from cli's early look-up: under `sh -c` (no
    signal comes) it sees it gone and leaves; exec'd directly, the parent-death SIGTERM is a restart.
    Either way a RELOAD: one reader remains, no STOP while keepalived runs, exactly one at its stop."""
    c = real_cluster(checker=True, fifo_form=form)
    n1, _ = c.nodes
    c.start()
    c.wait_settled()
    which = "checker" if form == "global" else "vrrp"
    child = n1.child_pid(which)
    before = n1.current_reader().pid
    os.kill(child, signal.SIGKILL)  # a first crash, so the reader held below is a restarted child's
    child = _respawned(n1, which, child)
    n1.wait_for("the next reader", lambda: _reader_other_than(n1, before))
    reader = n1.current_reader().pid
    n1.wait_for("the reader to catch SIGTERM", lambda: processes.catches_sigterm(reader))
    os.kill(reader, signal.SIGSTOP)
    os.kill(child, signal.SIGKILL)
    _respawned(n1, which, child)
    n1.wait_for("the dead child reaped", lambda: not os.path.exists(f"/proc/{child}"))
    os.kill(reader, signal.SIGCONT)
    n1.wait_for("the held reader gone", lambda: not processes.running(reader))
    _one_new_reader(n1, {reader})
    assert "STOP" not in _reader_events(n1), n1.diagnostics()
    n1.term()
    n1.wait_idle()
    assert _reader_events(n1).count("STOP") == 1, _reader_events(n1)
    check_run(n1.state, n1.dir, n1.log, stops=1)
