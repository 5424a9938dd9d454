"""The first action's spawn, with real cgroups, real processes and strace: a worker not yet in the
action's cgroup clones the action straight into it (clone3 CLONE_INTO_CGROUP) and moves itself in
only once it has nothing to run; where clone3 is refused it moves in first, as it always did.
Either way the action and what it forks are in the cgroup from their first instruction, and a
timeout ends all of them and never the worker."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from support import VI, processes, recorder
from support.launcher import Launcher
from support.marks import needs
from support.standin import Keepalived

from notify_launcher import containment

CGROUPS = containment.own_cgroup() is not None and os.geteuid() == 0
STRACE = shutil.which("strace") is not None
pytestmark = needs("a writable cgroup v2 hierarchy, as root", CGROUPS)
needs_strace = needs("strace (Debian's strace: scripts/setup installs it)", STRACE)

#: The handler's first command: bash reads its own cgroup (a builtin: no fork), then that of a child
#: it forks at once (the parent reads it: the child may be gone by the time it would read it itself).
_FIRST = """#!/bin/bash
cgroup() {{ local l; while read -r l; do [[ $l == 0::* ]] && printf '%s\\n' "${{l#0::}}"; done < "$1"; }}
cgroup /proc/self/cgroup > "{dir}/action.$NL_SEQ"
sleep 300 & child=$!
cgroup /proc/$child/cgroup > "{dir}/child.$NL_SEQ"
kill $child
"""


def _first_handler(launcher: Launcher) -> None:
    path = launcher.dir / "first.sh"
    path.write_text(_FIRST.format(dir=launcher.dir) + recorder.script(records=launcher.rec).split("\n", 1)[1])
    path.chmod(0o755)
    launcher.handler = path


def _start_cgroups(launcher: Launcher) -> dict[int, str]:
    """Each action's cgroup (its directory) as its start record names it."""
    found = {}
    for line in (launcher.state / "progress").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("op") == "start" and "cgroup" in rec:
            found[rec["seq"]] = rec["cgroup"]
    return found


def _relative(cgroup: str) -> str:
    """A cgroup's directory as /proc/PID/cgroup names it."""
    return re.sub(r"^/sys/fs/cgroup(/unified)?", "", cgroup)


def _first_event_waiting(launcher: Launcher, out: Path, trace: str = "", *strace: str) -> Keepalived:
    """keepalived started with #1 in the FIFO, its script under `strace -f` (the system calls `trace`
    traced too, with options `strace`, its output into `out`), which stops the worker (SIGSTOP) at its prctl(PR_SET_CHILD_SUBREAPER), before it
    first looks at the journal; it goes on (SIGCONT) once #1 is journaled.  So the worker has never
    been idle -- never moved into its action cgroup -- before #1's spawn, whatever the load."""
    k = _traced(launcher, out, "-e", f"trace=prctl{trace and ','}{trace}", "-e", "inject=prctl:signal=SIGSTOP", *strace)
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.wait_for("#1 journaled", lambda: launcher.last_seq() >= 1)
    stopped: list[str] = []

    def worker_stopped() -> bool:
        stopped[:] = re.findall(r"^(\d+) +--- stopped by SIGSTOP ---", out.read_text(), re.M)
        return bool(stopped)

    launcher.wait_for("the worker stopped at its prctl", worker_stopped)
    os.kill(int(stopped[0]), signal.SIGCONT)
    return k


def _moved_in(launcher: Launcher) -> None:
    """Wait until the worker, idle, is in an action cgroup of its own."""
    worker = _worker_pid(launcher)

    def inside() -> bool:
        with open(f"/proc/{worker}/cgroup") as fh:
            own = next(line for line in fh.read().splitlines() if line.startswith("0::"))
        return re.search(rf"/notify-launcher-[0-9a-f]{{8}}-{worker}-\d+-\d+$", own) is not None

    launcher.wait_for("the worker's move into its action cgroup", inside)


def _traced(launcher: Launcher, out: Path, *strace: str) -> Keepalived:
    """The keepalived stand-in, its script (the reader, and so its worker and their actions) run
    under `strace -f` with options `strace`, its output into `out`."""
    k = Keepalived(["strace", "-f", "-qq", "-o", str(out), *strace, *launcher.argv()], str(launcher.fifo))
    launcher.standins.append(k)
    launcher.logs.append(launcher.log)
    return k


def _worker_pid(launcher: Launcher) -> int:
    return int((launcher.state / "worker.pid").read_text().split()[0])


def test_the_first_action_and_what_it_forks_at_once_are_in_its_cgroup_from_the_start(launcher: Launcher) -> None:
    """The line is in the FIFO before the script runs (the first event at start): the action's first
    command reads its own cgroup, then that of a child it forks at once; both are the cgroup its
    start record names, an action cgroup of the worker's."""
    _first_handler(launcher)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    k.stop([])
    recorded = _relative(_start_cgroups(launcher)[1])
    assert re.search(r"/notify-launcher-[0-9a-f]{8}-\d+-\d+-\d+$", recorded), recorded
    assert (launcher.dir / "action.1").read_text().strip() == recorded
    assert (launcher.dir / "child.1").read_text().strip() == recorded


#: The handler's first lines, bash builtins (no fork): its signal dispositions and mask as the kernel
#: has them right after the exec.
_SIGNALS = """#!/bin/bash
while read -r key value; do
    [[ $key == SigIgn: || $key == SigBlk: ]] && printf '%s %s\\n' "$key" "$value" >> "{dir}/signals.$NL_SEQ"
done < /proc/$$/status
"""


def test_every_action_starts_with_every_signal_at_default_cloned_or_posix_spawned(launcher: Launcher) -> None:
    """keepalived (its reader, its worker) starts with SIGUSR1 and SIGUSR2 ignored (a container's
    entry point, a shell's background job); the worker ignores SIGPIPE and SIGHUP itself.  The first
    action (cloned into its cgroup) and the next (posix_spawned from inside it, once the worker
    moved in) start with the dispositions bash has when the test itself starts it -- nothing
    ignored but what bash ignores by itself: not glibc's internal 32 and 33 either, which its
    posix_spawn ignores in the child unless told otherwise -- and nothing blocked."""
    probe = launcher.dir / "probe.sh"
    probe.write_text(_SIGNALS.format(dir=launcher.dir))
    probe.chmod(0o755)
    subprocess.run([str(probe)], env=dict(os.environ, NL_SEQ="0"))  # (its status: the last test's)
    handler = launcher.dir / "signals.sh"
    handler.write_text(probe.read_text() + recorder.script(records=launcher.rec).split("\n", 1)[1])
    handler.chmod(0o755)
    launcher.handler = handler
    k = launcher.keepalived()
    inherited = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        k.start()
    finally:
        for signum, previous in inherited.items():
            signal.signal(signum, previous)
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    _moved_in(launcher)
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    found = {seq: (launcher.dir / f"signals.{seq}").read_text() for seq in (0, 1, 2)}
    assert found[1] == found[2] == found[0], found
    assert "SigBlk: 0000000000000000" in found[0]


@needs_strace
def test_the_first_spawn_clones_into_the_cgroup_before_the_worker_moves(launcher: Launcher) -> None:
    """The first action is cloned into its cgroup (clone3 with CLONE_INTO_CGROUP, an fd of the
    action cgroup) and has returned before the worker's own move into it (its write of "0" to the
    cgroup.procs) even begins: the first spawn waits for no move."""
    trace = launcher.dir / "strace.out"
    k = _first_event_waiting(launcher, trace, "clone3,write", "-y")
    launcher.settle(1)
    _moved_in(launcher)
    k.stop([])
    lines = trace.read_text().splitlines()
    clone = [i for i, line in enumerate(lines) if "CLONE_INTO_CGROUP" in line and "CLONE_VM" not in line]
    assert clone, "no clone3 into an action cgroup in the trace:\n" + "\n".join(lines[-40:])
    pid = lines[clone[0]].split()[0]
    returned = next(i for i in range(clone[0], len(lines))
                    if lines[i].startswith(pid + " ") and "clone3" in lines[i] and re.search(r"\) = \d+", lines[i]))
    move = [i for i, line in enumerate(lines) if re.search(r'write\(\d+</[^>]*/notify-launcher-[^>]*/cgroup\.procs>, "0"', line)]
    assert move, "no move into an action cgroup in the trace"
    assert returned < move[0], "the first clone3 returned after the worker's move began:\n" + "\n".join(lines[clone[0]:move[0] + 1])


@needs_strace
def test_where_clone3_is_refused_the_worker_moves_first_says_so_once_and_contains_the_action(
        launcher: Launcher) -> None:
    """clone3 refused for real (strace injects ENOSYS into every clone3, as an old kernel or Docker's
    seccomp profile would): the worker's log says so once, on the line saying how it contains
    actions, and the action and its child are still in the action's cgroup from the start."""
    _first_handler(launcher)
    k = _traced(launcher, Path(os.devnull), "-e", "trace=clone3", "-e", "inject=clone3:error=ENOSYS")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(1)
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    said = [line.split(" | ", 1)[1] for line in launcher.log_text().splitlines() if "a cgroup refused" in line]
    assert len(said) == 1, said
    assert said[0].startswith("actions contained in cgroups under ") and \
        "clone3 into a cgroup refused (ENOSYS (Function not implemented))" in said[0], said
    recorded = _start_cgroups(launcher)
    for seq in (1, 2):
        assert (launcher.dir / f"action.{seq}").read_text().strip() == _relative(recorded[seq])
        assert (launcher.dir / f"child.{seq}").read_text().strip() == _relative(recorded[seq])


@needs_strace
def test_an_exec_failure_is_the_same_logged_failure_cloned_or_posix_spawned(launcher: Launcher) -> None:
    """The handler's interpreter is missing, so its exec fails: the first event's (cloned into the
    action's cgroup) and the second's (posix_spawned by the worker from inside it, once moved) end
    with the same logged failure."""
    broken = launcher.dir / "broken.sh"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    launcher.handler = broken
    k = _first_event_waiting(launcher, launcher.dir / "strace.out")
    launcher.settle(1)
    _moved_in(launcher)
    worker = _worker_pid(launcher)
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    assert _worker_pid(launcher) == worker
    ended = [re.sub(r" after [0-9.]+s$", "", line.split(" | ", 1)[1])
             for line in launcher.log_text().splitlines() if "action ended" in line]
    assert ended == [f"action ended: could not start: {broken}: No such file or directory"] * 2, ended


def test_a_timeout_of_the_first_action_ends_its_whole_tree_and_not_the_worker(launcher: Launcher) -> None:
    """The first action (cloned into its cgroup: the worker is not in it) ignores SIGTERM and leaves
    a child and a setsid'd grandchild: the timeout ends all three, the worker lives on, outside the
    killed cgroup, and runs the next event."""
    pids = launcher.dir / "pids"
    launcher.handler = recorder.install(launcher.dir / "tree.sh", records=launcher.rec, then=f"""
if [ "$3" = BACKUP ]; then
    trap "" TERM
    sleep 300 & echo $! >> {pids}
    setsid sleep 300 & echo $! >> {pids}
    echo $$ >> {pids}
    sleep 300
fi""")
    ini = launcher.dir / "t.ini"
    ini.write_text("[launcher]\ntimeout = 1\nkill_grace = 0.2\n")
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.wait_for("#1's end", lambda: "action ended: timed out" in launcher.log_text(), timeout=60)
    tree = [int(p) for p in pids.read_text().split()]
    worker = _worker_pid(launcher)
    assert len(tree) == 3 and not [p for p in tree if processes.running(p)]
    assert processes.running(worker)
    k.write(VI.format("MASTER"))
    launcher.settle(2)
    k.stop([])
    assert _worker_pid(launcher) == worker
    assert [(r.kind, r.seq) for r in launcher.records()] == [("start", 1), ("start", 2), ("end", 2)]


#: A stand-in worker (this checkout's Containment in a process of its own, single-threaded as a
#: worker is): sys.argv[1] is its state directory, sys.argv[2] what to do; it prints JSON.
_WORKER = """
import json, os, signal, sys
from notify_launcher import actions
from notify_launcher.containment import Containment, own_cgroup

contained = Containment(sys.argv[1])
contained.start()
contained.way()
box = contained.box(1)
if sys.argv[2] == "removed":  # the slot goes before the first spawn (a leaving worker's sweep saw it empty)
    removed = contained.cgroups.slot
    os.rmdir(removed)
else:
    removed = None
proc, out, err = box.spawn(lambda into: actions.spawn(["/bin/sleep", "300"], dict(os.environ), None, into))
box.started(proc.pid)
with open(f"/proc/{proc.pid}/cgroup") as fh:
    child = [line[3:] for line in fh.read().splitlines() if line.startswith("0::")][0]
if sys.argv[2] == "killed":  # the worker's move into the slot is begun (idle), then a timeout kills the slot
    contained.idle()
box.end(lambda text: None)
proc.wait()
print(json.dumps({"removed": removed, "cgroup": box.cgroup, "child": child, "way": contained.way(),
                  "worker": own_cgroup(), "moving": contained.cgroups._mover.busy, "returncode": proc.returncode}))
contained.close()
"""


def _stand_in_worker(tmp_path: Path, what: str) -> dict[str, object]:
    from support import ROOT
    res = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path / "state"), what], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


def test_a_slot_removed_under_the_worker_before_its_first_spawn_is_made_again(tmp_path: Path) -> None:
    """The worker's slot is removed before the first spawn (a leaving worker of the same state
    directory sweeps the empty cgroups): the spawn makes another and the action is born in it."""
    (tmp_path / "state").mkdir()
    got = _stand_in_worker(tmp_path, "removed")
    assert got["way"] == f"actions contained in cgroups under {containment.own_cgroup()}"
    assert got["cgroup"] != got["removed"] and _relative(str(got["cgroup"])) == got["child"], got
    assert got["returncode"] == -signal.SIGKILL, got


def test_a_timeout_while_the_workers_move_is_in_flight_kills_the_action_not_the_worker(tmp_path: Path) -> None:
    """The first action is cloned into its slot; the worker begins its move into the slot, and the
    action's end (a timeout's Box.end) comes at once: the worker waits for its move, leaves the slot
    again before it kills it, and lives on in its own cgroup; the action is killed."""
    (tmp_path / "state").mkdir()
    got = _stand_in_worker(tmp_path, "killed")
    assert _relative(str(got["cgroup"])) == got["child"], got
    assert got["returncode"] == -signal.SIGKILL and not got["moving"], got
    assert got["worker"] == containment.own_cgroup(), got
