"""The worker's own CPU per event: N events journaled, then one worker drains them in this process.

    .venv/bin/python benchmarks/worker_cpu.py [--events 1000] [--rounds 5] [--handler /bin/true]

No reader, no FIFO, no doorbell traffic: what is measured is the worker's user+system CPU
(getrusage RUSAGE_SELF, the actions' own CPU excluded) from `start()` to the end of `run()`,
divided by the events -- the cost the worker adds to each action it spawns.  Each round uses a
fresh state directory on /dev/shm (tmpfs, as /run is); the median over rounds is printed.  Run it
with another checkout's package first on PYTHONPATH for a before/after comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

from notify_launcher.config import Settings
from notify_launcher.events import Event
from notify_launcher.identity import ProcessId
from notify_launcher.journal import JournalWriter
from notify_launcher.locks import WorkerLock
from notify_launcher.log import Log
from notify_launcher.statedir import ensure_state_dir
from notify_launcher.worker import Worker


def one_round(events: int, handler: str) -> float:
    """CPU seconds per event of one drain, in a child process (a worker changes its signals and
    becomes a subreaper: the measuring process must not)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        root = tempfile.mkdtemp(prefix="nl-worker-cpu-", dir="/dev/shm")
        try:
            paths = ensure_state_dir(os.path.join(root, "state"))
            writer = JournalWriter(paths.journal)
            for i in range(events):
                writer.append(Event("INSTANCE", f"VI_{i % 10}", "MASTER" if i % 2 else "BACKUP", i), time.time(), 1)
            writer.close()
            settings = Settings(handler=(handler,), state_dir=paths.root, log_file=os.path.join(root, "log"),
                                linger=0)
            nobody = ProcessId(os.getpid(), -1)  # no reader to stand by for
            lock = WorkerLock(paths)
            lock.take(lambda holder: None)
            worker = Worker(settings, paths, Log(settings.log_file, "worker"), "benchmark", nobody, lock)
            before = resource.getrusage(resource.RUSAGE_SELF)
            worker.start()
            worker.run()
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            os.write(wfd, f"{cpu / events}\n".encode())
        finally:
            shutil.rmtree(root, ignore_errors=True)
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as fh:
        text = fh.read()
    os.waitpid(pid, 0)
    return float(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--handler", default="/bin/true")
    args = p.parse_args()
    per_event = [one_round(args.events, args.handler) for _ in range(args.rounds)]
    print(f"worker CPU per event: median {statistics.median(per_event) * 1e6:.0f} us "
          f"(rounds: {', '.join(f'{x * 1e6:.0f}' for x in per_event)}; {args.events} events, handler {args.handler}; "
          f"load {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
