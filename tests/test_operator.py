"""The operator's commands: send, history, status --json, coalescing; their errors (one line, the
README's exit codes, never a traceback); the reader's input policy.  Real processes throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import LAUNCHER, ROOT, VI
from support.launcher import Launcher
from support.marks import needs
from support.waiting import wait_for
from support.recorder import check_order
from notify_launcher.events import Event
from notify_launcher.journal import Entry, format_entry


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=60)


def test_send_through_fifo_and_state_dir_then_history(launcher: Launcher) -> None:
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    res = _run("send", "--fifo", str(launcher.fifo), VI.format("MASTER"))
    assert res.returncode == 0 and res.stdout.strip() == f"written to {launcher.fifo}"
    launcher.settle(1)
    k.stop([])
    launcher.settle(2)  # + the reader's own STOP
    # keepalived is down now: --state-dir still reaches a worker
    res = _run("send", "--state-dir", str(launcher.state), VI.format("BACKUP"))
    assert res.returncode == 0 and res.stdout.strip() == "journaled as #3"
    launcher.settle(3)
    assert [[r.seq, *r.args[:3]] for r in launcher.starts()] == [
        [1, "INSTANCE", "VI_1", "MASTER"], [3, "INSTANCE", "VI_1", "BACKUP"]]
    hist = _run("history", "--state-dir", str(launcher.state), "-n", "2")
    assert hist.returncode == 0
    lines = hist.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "FINISHED", "EVENT", "RESULT", "DURATION"]
    assert lines[1].split()[0] == "2" and "READER reader STOP" in lines[1] and "no action" in lines[1]
    assert lines[2].split()[0] == "3" and 'INSTANCE "VI_1" BACKUP 100' in lines[2] and "exit 0" in lines[2]
    data = json.loads(_run("history", "--state-dir", str(launcher.state), "--json").stdout)
    assert [r["seq"] for r in data] == [1, 2, 3]


def test_send_errors_are_clear(launcher: Launcher) -> None:
    launcher.fifo.parent.mkdir(exist_ok=True)
    import os
    os.mkfifo(launcher.fifo, 0o600)
    res = _run("send", "--fifo", str(launcher.fifo), VI.format("MASTER"))
    assert res.returncode == 3
    assert "no reader has it open" in res.stderr
    res = _run("send", "--state-dir", str(launcher.state), 'INSTANCE "VI\t1" MASTER 1')
    assert res.returncode == 2 and "not an event keepalived writes: control character 0x09" in res.stderr


def test_coalescing_runs_only_the_newest_pending_event_per_instance(launcher: Launcher) -> None:
    ini = launcher.dir / "x.ini"
    ini.write_text("[launcher]\ncoalesce = yes\n")
    launcher.sleep_on("FAULT", 1)
    k = launcher.keepalived("--config", str(ini))
    k.start()
    k.write(VI.format("FAULT"))  # runs 1 s; meanwhile three more VI_1 events and one VI_2 queue up
    launcher.wait_for("the FAULT action to start", launcher.records)  # #1 is no longer pending
    for line in (VI.format("BACKUP"), 'INSTANCE "VI_2" BACKUP 50', VI.format("MASTER"), VI.format("BACKUP")):
        k.write(line)
    launcher.settle(5)
    k.stop([])
    started, problems = check_order(launcher.records())
    assert problems == 0 and started == [1, 3, 5]
    log = launcher.log_text()
    assert '#2 INSTANCE "VI_1" BACKUP 100 | skipped: superseded by #5 (coalesce = yes)' in log
    assert '#4 INSTANCE "VI_1" MASTER 100 | skipped: superseded by #5 (coalesce = yes)' in log
    status = json.loads(_run("status", "--state-dir", str(launcher.state), "--json").stdout)
    assert status["instances"]["INSTANCE VI_1"]["state"] == "BACKUP"
    assert status["instances"]["INSTANCE VI_2"]["result"] == "exit 0"
    assert status["pending"] == [] and status["running"] is None


def test_every_command_has_help_with_an_example_and_version() -> None:
    for command in ([], ["serve"], ["check-config"], ["send"], ["status"], ["history"], ["wait"], ["log"]):
        res = _run(*command, "--help")
        assert res.returncode == 0, command
        assert "example" in res.stdout.lower() or "keepalived.conf:" in res.stdout, command
        assert "default" in res.stdout or command in (["send"], ["check-config"]), command
    res = _run("--version")
    assert res.returncode == 0 and res.stdout.startswith("notify-launcher ")


def test_usage_error_exit_code_is_2() -> None:
    assert _run("--timeout", "soon", "/nonexistent.fifo").returncode == 2
    assert _run("wait", "--timeout", "x").returncode == 2


def test_wait_times_out_with_exit_1_while_an_action_runs(launcher: Launcher) -> None:
    launcher.sleep_on("MASTER", 5)
    k = launcher.keepalived()
    k.start()
    k.write(VI.format("MASTER"))
    launcher.wait_started()
    launcher.wait_for("the action's start record", launcher.records, timeout=10)
    res = _run("wait", "--state-dir", str(launcher.state), "--timeout", "0.5")
    assert res.returncode == 1 and "still busy after 0.5s" in res.stderr
    status = _run("status", "--state-dir", str(launcher.state))
    assert 'running: #1 INSTANCE "VI_1" MASTER 100  action pid' in status.stdout
    launcher.settle(1)
    k.stop([])


def test_reader_rejects_control_bytes_and_runs_unforeseen_words_warning_once(launcher: Launcher) -> None:
    """A control byte (a NUL inside a name) is rejected before the journal, so no worker dies on it at
    spawn; an unknown state word or an odd priority is not dropped: it runs in order, with one
    warning per new word."""
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    k.write_raw(b'INSTANCE "VI_0\0" MASTER 100\n' b"VS [10.0.0.1\t]:tcp:80 UP\n"
                b'INSTANCE "VI_1" SLEEPY 100\n' b'INSTANCE "VI_1" SLEEPY 100\0\n' b'GROUP "G1" MASTER 300\n')
    launcher.settle(3)
    k.stop([])
    starts = [[r.seq, *r.args[:4]] for r in launcher.starts()]
    assert starts[:3] == [[1, "INSTANCE", "VI_1", "SLEEPY", "100"], [2, "INSTANCE", "VI_1", "SLEEPY", "100"],
                          [3, "GROUP", "G1", "MASTER", "300"]]
    log = launcher.log_text()
    assert "line 1 rejected (control character 0x00 at character 14" in log
    assert "line 2 rejected (control character 0x09 at character 12" in log
    assert log.count("unknown state 'SLEEPY' (INSTANCE line): not seen before") == 1
    assert "priority 300 outside 0..255: not seen before" in log


# --- errors: one line on stderr, a documented exit code, never a traceback -------------------------

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
END = {"op": "end", "seq": 1, "t": 1764000000.0, "key": "INSTANCE VI_1", "event": 'INSTANCE "VI_1" MASTER 100',
       "state": "MASTER", "result": "exit 0", "ok": True, "duration": 0.01}


def _says(res: subprocess.CompletedProcess[str], code: int, command: str, *needles: str) -> None:
    """Exit `code`, and stderr is one line `notify-launcher COMMAND: ...` holding every needle."""
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"notify-launcher {command}: "), res.stderr
    for needle in needles:
        assert needle in res.stderr, res.stderr


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory as the reader leaves it (0700, a journal, progress, settings), in a directory
    other users may enter, so that an unprivileged run meets the state directory's own mode."""
    base = Path(tempfile.mkdtemp(prefix="nl-operator-"))
    base.chmod(0o755)
    root = base / "state"
    root.mkdir(mode=0o700)
    entry = Entry(1, 1764000000.0, 1, Event("INSTANCE", "VI_1", "MASTER", 100))
    (root / "journal").write_bytes(format_entry(entry))
    (root / "progress").write_text(json.dumps(END) + "\n")
    (root / "settings.json").write_text("{}")
    yield root
    shutil.rmtree(base)


STATE_COMMANDS = [("status",), ("status", "--json"), ("history",), ("history", "--json"), ("wait", "--timeout", "5")]


@pytest.mark.parametrize("command", STATE_COMMANDS)
def test_a_missing_state_dir_is_an_error_not_an_empty_state(state: Path, command: tuple[str, ...]) -> None:
    res = _run(*command, "--state-dir", str(state / "nope"))
    _says(res, 3, command[0], f"{state / 'nope'}: No such file or directory", "check --state-dir")
    res = _run(*command, "--state-dir", str(state / "journal"))
    _says(res, 3, command[0], "Not a directory")


@needs("root and setpriv (util-linux)", os.geteuid() == 0 and shutil.which("setpriv") is not None)
@pytest.mark.parametrize("command", [*STATE_COMMANDS, ("send", 'INSTANCE "VI_1" MASTER 100')])
def test_a_permission_problem_says_so_and_is_not_a_timeout(state: Path, command: tuple[str, ...]) -> None:
    res = subprocess.run([*NOBODY, LAUNCHER, *command, "--state-dir", str(state)], capture_output=True, text=True,
                         timeout=60)
    _says(res, 3, command[0], "Permission denied", "run it as the user the reader runs as")


DAMAGE = [
    b"garbage\n",
    b'{"op": "end", "seq": 7, "t": 1\n',  # truncated
    b'{"op": "end"}\n{"op": "start", "seq": 2}\n{"op": "try"}\n',  # keys missing
    b'{"op": "end", "seq": "7", "t": 1, "key": [], "event": 1, "state": null, "result": 2}\n',  # wrong types
    b'{"op": ["end"], "seq": 7}\n[1, 2]\n"end"\n42\nnull\n',  # not records
    b'{"op": "end", "seq": 9, "t": NaN, "key": "k", "event": "e", "state": "s", "result": "r"}\n',
    b'{"op": "end", "seq": 9, "t": 1e300, "key": "k", "event": "e", "state": "s", "result": "r", "duration": "x"}\n',
    b'{"op": "start", "seq": 9, "t": 1e300, "key": "k", "event": "e", "state": "s", "pid": -1, "worker": -1, '
    b'"worker_start": 0, "pid_start_min": 0, "pid_start_max": 0}\n',
    b"[" * 100000 + b"\n",
    b"\xff\xfe\0\n",
]


@pytest.mark.parametrize("damage", DAMAGE, ids=range(len(DAMAGE)))
def test_a_damaged_progress_file_or_journal_never_stops_status_or_history(state: Path, damage: bytes) -> None:
    """Records replayed from the progress file may be JSON and still not records a worker wrote."""
    with open(state / "progress", "ab") as fh:
        fh.write(damage)
    with open(state / "journal", "ab") as fh:
        fh.write(damage)
    for command in STATE_COMMANDS:
        res = _run(*command, "--state-dir", str(state))
        assert "Traceback" not in res.stderr and res.returncode in (0, 1), (command, res.stderr)
    history = json.loads(_run("history", "--json", "--state-dir", str(state)).stdout)
    assert history[0] == END  # the well-formed record is still there
    json.loads(_run("status", "--json", "--state-dir", str(state)).stdout)  # still JSON (no NaN)


@pytest.mark.parametrize("settings,needle", [(None, "settings.json: No such file or directory"),
                                             ('{"handler":', "settings.json is damaged"),
                                             ("[]", "settings.json is damaged")])
def test_send_without_usable_settings(state: Path, settings: str | None, needle: str) -> None:
    if settings is None:
        (state / "settings.json").unlink()
    else:
        (state / "settings.json").write_text(settings)
    _says(_run("send", "--state-dir", str(state), 'INSTANCE "VI_1" MASTER 100'), 3, "send", needle)


def test_send_refuses_a_bad_line_and_a_file_that_is_not_a_fifo(state: Path) -> None:
    _says(_run("send", "--state-dir", str(state), 'INSTANCE "VI_1" MASTER'), 2, "send",
          "not an event keepalived writes: malformed VRRP line", "e.g. 'INSTANCE \"VI_1\" MASTER 100'")
    before = (state / "journal").read_bytes()
    _says(_run("send", "--fifo", str(state / "journal"), 'INSTANCE "VI_1" MASTER 100'), 3, "send",
          "is not a FIFO")
    assert (state / "journal").read_bytes() == before
    _says(_run("send", "--fifo", str(state / "nope"), 'INSTANCE "VI_1" MASTER 100'), 3, "send",
          "No such file or directory")


def test_an_unforeseen_exception_is_one_line_and_exit_70(state: Path) -> None:
    """The catch-all: whatever nobody foresaw is named in one line, as a bug to report."""
    code = ("import sys, notify_launcher.status as s\n"
            "def boom(paths): raise ZeroDivisionError('injected')\n"
            "s.read_status = boom\n"
            "from notify_launcher.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    res = subprocess.run([sys.executable, "-c", code, "status", "--state-dir", str(state)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _says(res, 70, "status", "unexpected error: ZeroDivisionError: injected", "this is a bug: please report it")


def _in_sleep(pid: int) -> bool:
    """The process sleeps in clock_nanosleep (Python's time.sleep): its kernel wait channel says so,
    or (a kernel that hides it) its current system call does."""
    try:
        if "nanosleep" in Path(f"/proc/{pid}/wchan").read_text():
            return True
        number = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return number == {"x86_64": "230", "aarch64": "115"}.get(os.uname().machine)


def test_ctrl_c_during_wait_is_one_line_and_exit_130(state: Path) -> None:
    (state / "progress").write_text("")  # event #1 pending for ever: nothing runs it
    # As from a terminal: SIGINT at its default.  A background job of a non-interactive shell (how a
    # CI runner may start us) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([LAUNCHER, "wait", "--state-dir", str(state)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_polling(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    _says(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 130, "wait", "interrupted")


def _polling_wait(state: Path, *more: str) -> subprocess.Popen[str]:
    """`wait` on a state directory whose event #1 stays pending (nothing runs it), once it polls."""
    (state / "progress").write_text("")
    proc = subprocess.Popen([LAUNCHER, "wait", "--state-dir", str(state), *more], stderr=subprocess.PIPE, text=True)
    _wait_polling(proc)
    return proc


def _wait_polling(proc: subprocess.Popen[str]) -> None:
    """Wait until `wait` is past its imports and polling (in time.sleep between reads)."""
    wait_for("`wait` to get to its polling loop", lambda: proc.poll() is not None or _in_sleep(proc.pid), timeout=60)
    assert proc.poll() is None, "`wait` ended before its polling loop"


@pytest.mark.parametrize("more", [(), ("--timeout", "600")], ids=["no-timeout", "timeout"])
def test_sigterm_ends_wait_with_one_line_and_exit_143(state: Path, more: tuple[str, ...]) -> None:
    """A `wait` (with or without --timeout) ends on SIGTERM: systemd's ExecStop, a script's kill."""
    proc = _polling_wait(state, *more)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    _says(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 143, "wait", "terminated (SIGTERM)")


def test_timeout_ends_wait_before_its_own_timeout(state: Path) -> None:
    """`timeout -s TERM 1 notify-launcher wait --timeout 30`: ended by timeout's SIGTERM (143, passed
    on by --preserve-status), not by its own --timeout (1)."""
    (state / "progress").write_text("")
    res = subprocess.run(["timeout", "--preserve-status", "-s", "TERM", "1", LAUNCHER, "wait", "--state-dir",
                          str(state), "--timeout", "30"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 143, res.stderr


def test_only_the_reader_takes_sigterm_while_it_starts(tmp_path: Path) -> None:
    """The early SIGTERM handler is the reader's: an installed script under any name takes it when it
    starts the reader, not for an operator command; a program importing the package keeps the default."""
    report = ("import signal\n"
              "print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n")
    script = tmp_path / "nl-renamed"  # pip's console script, renamed by a symlink or a copy; ends before main()
    pip = (Path(sys.executable).parent / "notify-launcher").read_text()
    import_main = "from notify_launcher.cli import main\n"
    script.write_text(pip.replace(import_main, f"{import_main}{report}raise SystemExit\n"))
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    caught = [subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60, env=env).stdout.strip()
              for args in (["/run/k.fifo"], ["serve", "--fifo", "/run/k.fifo"], ["wait"])]
    assert caught == ["True", "True", "False"]
    res = subprocess.run([sys.executable, "-c", f"import notify_launcher.cli\n{report}", "/run/k.fifo"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.stdout.strip() == "False", res.stderr


def test_history_into_a_closed_pipe_is_quiet(state: Path) -> None:
    """`notify-launcher history -n 5000 | head -1`: no "Exception ignored ... BrokenPipeError"."""
    (state / "progress").write_text("".join(json.dumps({**END, "seq": n}) + "\n" for n in range(1, 5001)))
    proc = subprocess.Popen([LAUNCHER, "history", "-n", "5000", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b""
