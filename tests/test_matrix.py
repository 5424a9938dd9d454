"""The compatibility matrix: the launcher on each Debian release it supports, installed the
way that release's users install it, under that release's own systemd, keepalived and Python.

Each cell of tests/support/systemd/cells.py MATRIX boots one container (the `cell` scenario of
tests/support/systemd/scenario.sh, on a cached root file system of the release) and the tests below
check what it recorded:

  - the release is what the matrix says (keepalived, Python, Debian version), and the launcher is
    installed as the cell says (the .deb pulled in only packages of the release's own archive);
  - the example configuration (keepalived.conf.example, the example INI) passes `keepalived -t`
    and `notify-launcher check-config`;
  - a MASTER action outlives `systemctl stop keepalived`, and the STOP action runs to its end;
  - `systemctl reload keepalived` mid-action keeps the numbering, and the burst of events of the
    instances the reload adds runs in order.

Figures (stop -> reader exit, STOP action end, reload) are printed as TIMING lines; no test
asserts a duration.  Root with debootstrap and systemd-nspawn (scripts/setup installs them); the
first run builds each release's root (/var/cache/notify-launcher-test, 1-2 min each, needs the
Debian mirror and PyPI) and the .deb: 317 s cold, 31-49 s warm for bullseye, bookworm and trixie, plus
72 s cold, 10 s warm for testing, on 2 cores.  Elsewhere these tests skip; under CI=true a missing
prerequisite fails them.  One cell by hand, with its full diagnostics:
`PYTHONPATH=tests .venv/bin/python -m support.systemd.harness -v --cell trixie-deb cell`.
"""

from __future__ import annotations

import re

import pytest

from support import inorder
from support.recorder import Action
from support.systemd import cells, harness, rootfs, testing
from support.systemd.cells import Cell
from support.systemd.harness import Result

SOURCE = harness.default_source()  # the checkout installed into the containers
STOP_SECONDS = 2.0  # the STOP action's sleep in the cell scenario (scenario.sh scenario_cell)
WORKER_UNIT = r"/system\.slice/notify-launcher-worker-[\w.-]+\.service"


@pytest.fixture(scope="module", params=cells.matrix(), ids=lambda c: c.name)
def res(request: pytest.FixtureRequest) -> Result:
    """One boot of the cell's container running the `cell` scenario (its cache built first)."""
    cell: Cell = request.param
    say = testing.prepare(request, cell, SOURCE, cell.name)
    result = testing.run("cell", cell, SOURCE)
    say(f"container ran {result.seconds:.1f} s\n{result.report()}")
    assert result.done, f"the scenario did not finish\n{result.diagnostics()}"
    say(figures(result))
    return result


def logged_at(res: Result, pattern: str, after: float) -> float | None:
    """When the launcher first logged a line matching `pattern` at or after `after` (epoch)."""
    return next((t for t, _ in res.logged(pattern) if t >= after - 0.002), None)


def figures(res: Result) -> str:
    """The cell's figures: stop -> reader exit, -> STOP action end; reload -> old reader exit, ->
    new reader, -> the burst journaled; the burst's run."""
    marks, facts = res.timeline, res.facts

    def since(zero: str, t: float | None) -> str:
        return "-" if t is None or zero not in marks else f"{t - marks[zero]:.3f} s"

    stop = next((a for a in res.actions if a.state == "STOP"), None)
    burst = [a for a in until_settled(res) if a.start > marks.get("burst_in", float("inf"))]
    exiting, started = r"\| reader exiting", r"\| reader started"
    return "; ".join((
        f"stop: systemctl stop {since('stop_begin', marks.get('stop_end'))}, stop -> reader exit "
        f"{since('stop_begin', logged_at(res, exiting, marks.get('stop_begin', 0)))}, -> STOP action start "
        f"{since('stop_begin', stop.start if stop else None)} (the MASTER action's gate opened at the stop's "
        f"end), -> STOP action end {since('stop_begin', stop.end if stop else None)} "
        f"(KillMode {facts.get('keepalived_killmode')})",
        f"reload: systemctl reload {since('reload_begin', marks.get('reload_end'))}, reload -> old reader exit "
        f"{since('reload_begin', logged_at(res, exiting, marks.get('reload_begin', 0)))}, -> new reader started "
        f"{since('reload_begin', logged_at(res, started, marks.get('reload_begin', 0)))}, -> all {harness.BURST} "
        f"new MASTER lines journaled {since('reload_begin', marks.get('burst_in'))}",
        f"burst: {len(burst)} actions ran in {since('burst_in', burst[-1].end if burst else None)}",
        f"{facts.get('keepalived_version')}, Python {facts.get('python_version')} ({facts.get('python_deps')}), "
        f"{facts.get('systemd_version')}"))


def until_settled(res: Result) -> list[Action]:
    """The scenario's actions: not those of the STOP lines of the poweroff after it (the journal
    and the log were copied before it; the handler's records go on)."""
    return [a for a in res.actions if a.start < res.timeline.get("settled", float("inf"))]


def the(res: Result, state: str, nth: int = 1) -> Action:
    found = [a for a in res.actions if a.state == state]
    assert len(found) >= nth, f"no {state} action #{nth}\n{res.diagnostics()}"
    return found[nth - 1]


def test_release_is_what_the_matrix_says(res: Result) -> None:
    release, facts = res.cell.release, res.facts
    assert facts.get("debian_version", "").startswith(release.debian_version), res.text("facts")
    assert re.match(rf"Keepalived v{re.escape(release.keepalived)}\b", facts.get("keepalived_version", "")), \
        res.text("facts")
    assert facts.get("python_version", "").startswith(f"{release.python}."), res.text("facts")
    assert facts.get("keepalived_package_modified") == "0", f"keepalived's packaged files changed\n{res.text('facts')}"


def test_installed_as_the_cell_says(res: Result) -> None:
    """venv: the venv's console script; deb: `apt install ./…deb` pulled in only packages that
    apt has, at the installed version, from the release's own archive (the root's only sources)."""
    assert res.facts.get("launcher_version", "").startswith("notify-launcher "), res.diagnostics()
    if res.cell.install == "venv":
        return
    text = res.text("deb-installed.txt")
    pulled = re.findall(r"^pulled (\S+) (\S+)$", text, re.M)
    assert "notify-launcher" in dict(pulled), f"the .deb was not installed\n{text}\n{res.text('install.log')[-3000:]}"
    suite, archives = res.cell.release.suite, (rootfs.find_mirror(), rootfs.security_mirror())
    for package, version in pulled:
        if package == "notify-launcher":
            continue
        origin = re.search(rf"^\s*{re.escape(package)}\s+\|\s+{re.escape(version)}\s+\|\s+(\S+)\s+{suite}(-\w+)?/main ",
                           text, re.M)
        assert origin and origin.group(1) in archives, \
            f"{package} {version} was not pulled from Debian's {suite} archive ({', '.join(archives)})\n{text}"


def test_example_config_passes_keepalived_t_and_check_config(res: Result) -> None:
    """keepalived -t exits 0 and says nothing, but for the keywords this keepalived is known not to
    know (cells.Release.unknown: 2.1.5 ignores fifo_write_vrrp_states_on_reload); check-config
    finds nothing wrong with the example INI and keepalived.conf."""
    facts, said = res.facts, res.text("keepalived-t.txt")
    shown = f"{said}\n--- example.conf\n{res.text('example.conf')}"
    assert facts.get("example_keepalived_t") == "0", f"keepalived -t: exit {facts.get('example_keepalived_t')}\n{shown}"
    unknown = re.findall(r"^\(\S+: Line \d+\) Unknown keyword '([^']+)'$", said, re.M)
    assert sorted(unknown) == sorted(res.cell.release.unknown), shown
    assert len([line for line in said.splitlines() if line.strip()]) == len(unknown), shown
    assert facts.get("example_check_config") == "0", \
        f"notify-launcher check-config on the example: exit {facts.get('example_check_config')}\n" \
        f"{res.text('check-config.txt')}\n--- example.ini\n{res.text('example.ini')}"


def test_master_action_outlives_systemctl_stop(res: Result) -> None:
    """The MASTER action was running when `systemctl stop keepalived` began, and ended normally
    after the stop was over (it waited at a gate opened only then), in a transient worker unit."""
    marks, master = res.timeline, the(res, "MASTER")
    assert master.start < marks["stop_begin"], f"the stop came before the MASTER action started\n{res.report()}"
    assert master.signal is None and master.end is not None, f"the MASTER action was killed\n{res.diagnostics()}"
    assert master.end > marks["stop_end"], f"the MASTER action did not outlive the stop\n{res.report()}"
    assert re.fullmatch(WORKER_UNIT, master.unit), \
        f"the MASTER action ran in {master.cgroup!r}, not in a transient worker unit\n{res.diagnostics()}"


def test_stop_action_runs_to_its_end(res: Result) -> None:
    """The STOP line keepalived wrote while stopping: its action (2 s) ran to its end after the
    MASTER action, not killed by the stop nor cut short."""
    master, stop = the(res, "MASTER"), the(res, "STOP")
    assert stop.start > res.timeline["stop_begin"], res.report()
    assert stop.end is not None and stop.signal is None, f"the STOP action was killed\n{res.diagnostics()}"
    assert stop.end - stop.start >= STOP_SECONDS, f"the STOP action was cut short\n{res.report()}"
    assert master.end is not None and master.end <= stop.start, f"STOP started before MASTER ended\n{res.report()}"
    assert re.fullmatch(WORKER_UNIT, stop.unit), f"the STOP action ran in {stop.cgroup!r}\n{res.diagnostics()}"


def test_reload_keeps_numbering(res: Result) -> None:
    """`systemctl reload keepalived` while an action runs: a new reader starts, the old one leaves,
    and the events after the reload are numbered right after those before it (the FIFO outlived
    the earlier stop, so keepalived reuses it and both readers may read the burst: they share one
    journal); the running action is not disturbed."""
    begin = res.timeline["reload_begin"]
    journal = inorder.journal_entries(res.text("journal"))
    seqs = [e.seq for e in journal]
    assert seqs == list(range(1, len(seqs) + 1)), f"journal numbered {seqs}\n{res.text('journal')}"
    before = [e.seq for e in journal if e.time < begin]
    after = [e.seq for e in journal if e.time >= begin]  # the old reader's READER RELOAD too
    events_after = [e for e in journal if e.time >= begin and e.event.type != "READER"]
    assert before and len(events_after) >= 2 * harness.BURST, f"not the events expected\n{res.text('journal')}"
    assert min(after) == max(before) + 1, f"the numbering did not carry on over the reload\n{res.text('journal')}"
    assert logged_at(res, r"\| reader started", begin) is not None, f"no new reader\n{res.diagnostics()}"
    assert logged_at(res, r"\| reader exiting", begin) is not None, f"the old reader stayed\n{res.diagnostics()}"
    gated = the(res, "MASTER", 2)
    assert gated.start < begin, f"the reload did not come mid-action\n{res.report()}"
    assert gated.end is not None and gated.signal is None, f"the reload disturbed the action\n{res.diagnostics()}"


def test_burst_runs_in_order(res: Result) -> None:
    """Every journaled event of the boot ran exactly once, in order, one at a time (support.inorder),
    the reload's burst included: each new instance's BACKUP, then its MASTER."""
    journal = inorder.journal_entries(res.text("journal"))
    problems = inorder.problems(journal, until_settled(res), res.text("launcher.log"))
    assert not problems, "; ".join(problems) + "\n" + res.diagnostics()
    burst = [a for a in until_settled(res) if a.start > res.timeline["burst_in"]]
    names = {f"VI_{i}" for i in range(2, harness.BURST + 2)}
    for name in names:
        states = [a.state for a in burst if a.name == name]
        assert states[-2:] == ["BACKUP", "MASTER"], f"{name}: actions {states}\n{res.report()}"
