"""Which way a worker leaves keepalived's reach: fork, then python-daemon's DaemonContext
(process.py: what a worker must escape, and the steps, one function each) -- or, where systemd
would kill keepalived's whole cgroup on stop, a transient systemd unit (systemd_unit.py).
"""

from __future__ import annotations

TYPE_CHECKING = False

import os

from notify_launcher import identity
from notify_launcher.config import Settings
from notify_launcher.log import Log
from notify_launcher.process import spawn_detached

if TYPE_CHECKING:
    from typing import Literal

    Way = Literal["daemon", "systemd"]


def choose(settings: Settings) -> tuple[Way, str]:
    """("daemon" | "systemd", why) for this reader's workers."""
    booted = os.path.isdir("/run/systemd/system")
    if settings.detach == "systemd" and not booted:
        return "daemon", "detach = systemd, but systemd is not running here: falling back to the double fork"
    if settings.detach != "auto":
        return settings.detach, "forced by the detach setting"
    if not booted:
        return "daemon", "systemd is not running"
    cgroup = _own_cgroup()
    if cgroup.endswith(".service"):
        return "systemd", (f"we run in {cgroup.rsplit('/', 1)[-1]}, whose stop kills its whole cgroup "
                           f"unless KillMode=process")
    return "daemon", f"our cgroup {cgroup or '?'} is not a service"


def _own_cgroup() -> str:
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ""
    paths = [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]
    unified = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    return (unified or [p for p in paths if p.endswith(".service")] or paths or [""])[0]


def spawn_worker(mode: Way, settings: Settings, standby_fd: int, hello_fd: int) -> None:
    """Start a worker that will drain the journal; returns at once.  See handoff.py for the fds."""
    if mode == "systemd":
        from notify_launcher.systemd_unit import spawn_unit  # subprocess: only this path needs it
        spawn_unit(settings, standby_fd, hello_fd)
        return

    reader = identity.me()

    def work() -> int:
        from notify_launcher.containment import Containment
        containment = Containment(settings.state_dir)
        # First: where clone3 cannot start the first action in its cgroup, the worker's move into it
        # waits for the kernel, meanwhile the imports.  Not before daemonize: python-daemon's setuid()
        # waits until every thread took the new ids, and the moving one cannot before its write returns
        # (tried: daemonize then waited for the whole move).
        containment.start()
        from notify_launcher.worker import run_forked_worker  # the worker's imports only
        return run_forked_worker(settings, standby_fd, hello_fd, reader, containment)

    def report(exc: Exception) -> None:
        """Why it died, traceback and all: the log is the only place anyone will see it."""
        Log(settings.log_file, "worker", settings.log_level).exception(None, None, "worker failed", exc)

    spawn_detached(work, [standby_fd, hello_fd], report)
