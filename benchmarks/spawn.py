#!/usr/bin/env python3
"""Why actions are posix_spawned, not started with subprocess.Popen (notify_launcher/actions.py), and
what the spawn with every signal at default (notify_launcher/posixspawn.py, through ctypes) costs
beside os.posix_spawn.

    .venv/bin/python benchmarks/spawn.py [--runs 500]

Spawns /bin/true the way the worker spawns an action (own session, stdin /dev/null, stdout and stderr
into pipes, the worker's environment plus the NL_* variables), alternating the two ways, and prints per
way the median time until the spawn call returns (the child has exec'd by then: both use vfork
semantics) and the parent's CPU per spawn (getrusage), medians over 4 alternating rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable

from notify_launcher import actions, posixspawn

ARGV = ["/bin/true", "INSTANCE", "VI_1", "MASTER", "100"]
ENV = dict(os.environ, NL_TYPE="INSTANCE", NL_NAME="VI_1", NL_STATE="MASTER", NL_PRIORITY="100", NL_SEQ="1",
           NL_VS="")


def with_popen() -> float:
    p = subprocess.Popen(ARGV, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                         cwd="/", start_new_session=True)
    returned = time.perf_counter()
    p.wait()
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    p.stderr.close()
    return returned


def _spawned(start: Callable[[list[tuple[int, int]]], int]) -> float:
    """`start(fds)` spawns /bin/true with each (fd, target) of fds dup2'd; when it returned."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    pid = start([(devnull, 0), (out_w, 1), (err_w, 2)])
    returned = time.perf_counter()
    for fd in (devnull, out_w, err_w):
        os.close(fd)
    os.waitpid(pid, 0)
    os.close(out_r)
    os.close(err_r)
    return returned


def with_posix_spawn() -> float:
    return _spawned(lambda fds: os.posix_spawn(ARGV[0], ARGV, ENV, setsid=True, file_actions=[
        (os.POSIX_SPAWN_DUP2, fd, target) for fd, target in fds]))


def with_posixspawn() -> float:
    return _spawned(lambda fds: posixspawn.spawn(ARGV, ENV, fds, actions._DEFAULT_SIGNALS))


def measure(way: Callable[[], float], runs: int) -> tuple[float, float]:
    """(median µs until the spawn call returned, parent CPU µs per spawn)."""
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(runs):
        t0 = time.perf_counter()
        times.append((way() - t0) * 1e6)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return statistics.median(times), cpu / runs * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=500)
    runs = p.parse_args().runs
    ways = {"subprocess.Popen": with_popen, "os.posix_spawn": with_posix_spawn, "posixspawn.spawn": with_posixspawn}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(4):
        for name, way in ways.items():
            results[name].append(measure(way, runs))
    print(f"{'way':<18}{'spawn returned (median)':>26}{'parent CPU per spawn':>24}")
    for name, rounds in results.items():
        print(f"{name:<18}{statistics.median(r[0] for r in rounds):>23.0f} us"
              f"{statistics.median(r[1] for r in rounds):>21.0f} us")


if __name__ == "__main__":
    main()
