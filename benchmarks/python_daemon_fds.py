"""What python-daemon 2.3.2's set of fd numbers costs a worker at a given hard RLIMIT_NOFILE, with and
without process.trim_fd_set (README, "Dependency floors").  Run it with a python-daemon 2.3.2 venv
(tests/test_debian_deps.py makes one), once per case, each in a fresh process, from the checkout:

    PYTHONPATH=. $VENV/bin/python benchmarks/python_daemon_fds.py 524288 [--trim]

The import sees the hard limit as HARD: getrlimit is faked for it in this script alone, since only
CAP_SYS_RESOURCE may raise the limit itself (this project's CI caps it at 20,000).  Prints the
import's time and growth, the time of open()'s fd closing (with the trim before it), and how much
more the process holds after it than before the import (VmRSS).
"""

from __future__ import annotations

import argparse
import resource
import time


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("hard", type=int, help="the hard RLIMIT_NOFILE python-daemon's import sees")
    p.add_argument("--trim", action="store_true", help="call process.trim_fd_set before closing the fds")
    args = p.parse_args()
    from notify_launcher.process import trim_fd_set  # before measuring: its import is not python-daemon's

    real = resource.getrlimit
    resource.getrlimit = lambda which: (1024, args.hard) if which == resource.RLIMIT_NOFILE else real(which)
    before, t0 = _rss_mb(), time.perf_counter()
    import daemon
    t1, imported = time.perf_counter(), _rss_mb()
    resource.getrlimit = real
    if args.trim:
        trim_fd_set(daemon.daemon)
    daemon.daemon.close_all_open_files(exclude={0, 1, 2})  # what DaemonContext.open() does with the set
    t2 = time.perf_counter()
    print(f"hard {args.hard} {'trimmed' if args.trim else 'as is'}: import {1000 * (t1 - t0):.1f} ms "
          f"(+{imported - before:.1f} MB), {'trim and ' if args.trim else ''}close {1000 * (t2 - t1):.1f} ms; "
          f"after: {_rss_mb() - before:+.1f} MB over before the import")


if __name__ == "__main__":
    main()
