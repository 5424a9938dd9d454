"""Workers as transient systemd units, for keepalived under systemd.

Debian's keepalived.service sets no KillMode, so `systemctl stop keepalived` kills every process in
keepalived's cgroup -- a double-forked, setsid'd worker too.  Only another cgroup escapes that:
`systemd-run` asks systemd to start the worker as a unit of its own.  File descriptors cannot be
handed through systemd, so the handover of standby.lock (handoff.py) goes the long way: a short-lived
helper keeps the lock while `systemd-run` starts the unit, releases it, and waits (bounded) until the
unit's worker holds it or answers the doorbell; only then does it say hello to the reader.  No
runtime limit is put on the unit: it would kill a healthy worker that drains a long queue, and
every action has its own timeout.
"""

from __future__ import annotations

import os
import sys
import time

from notify_launcher import identity
from notify_launcher.config import Settings
from notify_launcher.errors import EXIT_SOFTWARE
from notify_launcher.handoff import TAKEOVER_WAIT, Doorbell
from notify_launcher.locks import release_standby, standby_held
from notify_launcher.log import Log
from notify_launcher.process import close_inherited, leave_process_group, reset_signals
from notify_launcher.statedir import StatePaths


#: Python code that puts its first argument first on sys.path, then runs notify_launcher with the rest:
#: the unit's worker imports this very package from the directory that holds it, given as an argument
#: (as bin/notify-launcher does) -- not through PYTHONPATH, split at ':' (a checkout at /srv/nl:x
#: would add the relative entry x, looked up from the working directory), nor `-m`, which looks
#: in the working directory first.  An installed package's directory is on sys.path already, and
#: stays where it is (first, it could hide a module of the standard library).  One line: systemd
#: makes the command line the unit's description (`systemctl list-units` prints it).
RUN_FROM = ('import sys; top = sys.argv.pop(1); sys.path[:sys.path[0] == ""] = [] if top in sys.path else [top]; '
            'del sys.argv[1]; import notify_launcher.__main__')


def worker_command(*args: str) -> list[str]:
    """The command line that runs `notify-launcher ARGS` with this interpreter and this package."""
    return [sys.executable, "-c", RUN_FROM, os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "notify_launcher", *args]


def unit_name() -> str:
    """Unique, and telling in `systemctl list-units`."""
    return f"notify-launcher-worker-{os.getpid()}-{time.time_ns()}"


def spawn_unit(settings: Settings, standby_fd: int, hello_fd: int) -> None:
    """Fork the helper (it runs systemd-run and waits for the takeover); returns at once."""
    reader = identity.me()
    if os.fork():
        return
    status = EXIT_SOFTWARE
    try:
        leave_process_group()
        reset_signals()
        close_inherited([standby_fd, hello_fd])
        status = _helper(settings, standby_fd, hello_fd, reader)
    finally:
        os._exit(status)


def _helper(settings: Settings, standby_fd: int, hello_fd: int, reader: identity.ProcessId) -> int:
    import subprocess

    paths = StatePaths(settings.state_dir)
    name = unit_name()
    env = [f"--setenv=PYTHONPATH={os.environ['PYTHONPATH']}"] if "PYTHONPATH" in os.environ else []
    argv = ["systemd-run", f"--unit={name}", "--collect", "--quiet", "--property=UMask=0077",
            "--property=Delegate=yes", *env,
            *worker_command("_worker", "--state-dir", settings.state_dir, "--unit", name,
                            "--reader", str(reader.pid), "--reader-start", str(reader.start))]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=TAKEOVER_WAIT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log(settings, f"systemd-run failed: {exc}")
        return 1
    if done.returncode != 0:
        _log(settings, f"systemd-run failed (exit {done.returncode}): {done.stderr.decode(errors='replace').strip()}")
        return 1
    release_standby(standby_fd)
    deadline = time.monotonic() + TAKEOVER_WAIT
    doorbell = Doorbell(paths)
    while time.monotonic() < deadline:
        if standby_held(paths):
            os.write(hello_fd, f"unit {name}\n".encode())  # the unit's worker holds it now
            return 0
        if doorbell.answered():  # the unit may have passed standby.lock already
            os.write(hello_fd, f"unit {name}\n".encode())
            return 0
        time.sleep(0.01)
    _log(settings, f"unit {name} did not take over within {TAKEOVER_WAIT:g}s (see journalctl -u {name})")
    return 1


def _log(settings: Settings, message: str) -> None:
    Log(settings.log_file, "spawn", settings.log_level).error(None, None, message)
