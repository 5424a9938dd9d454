"""keepalived reloaded with another --state-dir while the old directory's action runs: the new
reader's events queue behind that work (never beside it, never before what was journaled there
earlier), and the log says so.  Real readers, workers and actions, through the stand-in."""

from __future__ import annotations

import os
import threading

from support import VI, recorder
from support.launcher import Launcher
from support.marks import needs
from support.standin import Keepalived, _await_or_kill

from notify_launcher.registry import entry_path


@needs("root (the readers record which state directory serves a FIFO under /run)", os.geteuid() == 0)
def test_a_reload_with_another_state_dir_queues_behind_the_old_directorys_action(launcher: Launcher) -> None:
    gate = launcher.dir / "gate"
    (launcher.dir / recorder.SLEEPS).write_text(recorder.sleep_line("*", "MASTER", 0, until=gate))
    k = launcher.keepalived()
    k.start()
    assert k.write(VI.format("MASTER"))
    launcher.wait_for("the MASTER action to start", launcher.starts)
    assert k.write(VI.format("FAULT"))  # journaled in the old directory, after MASTER
    launcher.wait_for("FAULT journaled", lambda: 'FAULT 100 | received' in launcher.log_text())
    new_state = launcher.dir / "state2"
    k.script = [str(new_state) if word == str(launcher.state) else word for word in k.script]
    k.reload().join()
    launcher.wait_for("the new reader", lambda: launcher.log_text().count("reader started") == 2)
    assert k.write(VI.format("BACKUP"))
    launcher.wait_for("BACKUP queued behind, or running beside", lambda: "BACKUP 100 | received (journaled into"
                      in launcher.log_text() or len(launcher.starts()) > 1)
    gate.touch()
    launcher.wait_for("three actions", lambda: len([r for r in launcher.records() if r.kind == "end"]) == 3)
    launcher.wait_idle()
    recs = launcher.records()
    order = [(r.kind, r.args[2]) for r in recs if r.kind in ("start", "end")]
    assert order == [("start", "MASTER"), ("end", "MASTER"), ("start", "FAULT"), ("end", "FAULT"),
                     ("start", "BACKUP"), ("end", "BACKUP")], order
    assert not [r for r in recs if r.kind == "overlap"]
    log = launcher.log_text()
    assert (f"was served by the state directory {launcher.state} before us (keepalived reloaded with another "
            f"--state-dir), and its worker still works") in log
    assert f"BACKUP 100 | received (journaled into {launcher.state}, behind its work)" in log
    assert os.path.exists(entry_path(str(launcher.fifo)))  # (removed by the fixture: /run outlives the test)
    k.stop([])
    launcher.unchecked = "two state directories in one log: their numbers overlap, checked above"


@needs("root (the readers record which state directory serves a FIFO under /run)", os.geteuid() == 0)
def test_another_readers_start_during_a_reload_gap_never_forgets_the_previous_state_dir(launcher: Launcher) -> None:
    """keepalived's reload unlinks the FIFO and makes a new one (support.standin); a reader of
    another keepalived on the host starts in that gap.  Our reload changed --state-dir to B while
    A's action runs: B's reader still finds A in the registry and queues behind it, so no two
    actions run at once."""
    gate = launcher.gate_backup()
    k = launcher.first_action_running()
    # keepalived's reload, by hand: SIGTERM + EOF, the FIFO unlinked ...
    proc, t0 = k._term_then_kill()
    os.close(k.fd)
    os.unlink(k.fifo)
    threading.Thread(target=_await_or_kill, args=(proc, t0), daemon=True).start()
    # ... the other instance's reader starts in the gap ...
    other_dir = launcher.dir / "other"
    other_dir.mkdir()
    other = Keepalived([*launcher.argv()[:1], "--handler", "/bin/true", "--state-dir", str(other_dir / "state"),
                        "--log-file", str(other_dir / "log"), "--linger", "1"], str(other_dir / "notify.fifo"))
    other.start()
    other_log = other_dir / "log"
    launcher.wait_for("the other reader", lambda: other_log.exists() and "reader started" in other_log.read_text())
    # ... and ours, with --state-dir B, on the new FIFO
    argv = launcher.argv()
    argv[argv.index(str(launcher.state))] = str(launcher.dir / "state-b")
    k.script = argv
    k.start()
    launcher.wait_for("B's reader", lambda: launcher.log_text().count("reader started") == 2)
    k.write(VI.format("MASTER"))
    launcher.wait_for("MASTER queued behind A", lambda: "MASTER 100 | received (journaled into" in launcher.log_text())
    gate.touch()
    launcher.wait_for("MASTER's action", lambda: any(r.state == "MASTER" for r in launcher.starts()), timeout=10)
    k.stop([])
    other.stop([])
    launcher.unchecked = "two state directories in one log: checked here"
    overlaps = [r for r in launcher.records() if r.kind == "overlap"]
    assert not overlaps, f"{overlaps}\n{launcher.log_text()[-3000:]}"


@needs("root (the readers record which state directory serves a FIFO under /run)", os.geteuid() == 0)
def test_a_second_reload_keeps_queueing_behind_the_previous_state_dir(launcher: Launcher) -> None:
    """A's action runs; keepalived is reloaded with --state-dir B (B's reader queues behind A,
    journaling into A), then reloaded again with the same command line: the third reader queues
    behind A too, so its event runs after A's work, in order, never beside A's action."""
    gate = launcher.gate_backup()
    k = launcher.first_action_running()
    state_b = launcher.dir / "state-b"
    argv = launcher.argv()
    argv[argv.index(str(launcher.state))] = str(state_b)
    k.script = argv
    k.reload()
    launcher.wait_for("B's reader", lambda: "queue behind it" in launcher.log_text())
    k.write(VI.format("MASTER"))
    launcher.wait_for("MASTER journaled", lambda: "MASTER 100 | received" in launcher.log_text())
    k.reload()  # the same command line again
    launcher.wait_for("the third reader", lambda: launcher.log_text().count("reader started") == 3)
    k.write(VI.format("FAULT"))
    launcher.wait_for("FAULT queued behind A", lambda: "FAULT 100 | received (journaled into" in launcher.log_text())
    gate.touch()
    launcher.wait_for("three actions", lambda: len([r for r in launcher.records() if r.kind == "end"]) == 3)
    k.stop([])
    launcher.unchecked = "two state directories in one log: checked here"
    records = launcher.records()
    overlaps = [r for r in records if r.kind == "overlap"]
    order = [r.state for r in launcher.starts()]
    assert not overlaps and order[:3] == ["BACKUP", "MASTER", "FAULT"], \
        f"overlaps: {overlaps}; actions started in the order {order}\n{launcher.log_text()[-3000:]}"
