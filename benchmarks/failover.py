#!/usr/bin/env python3
"""Failover under real keepalived: node1's keepalived (MASTER) gets SIGTERM; how soon does node2's MASTER action start?

    PYTHONPATH=tests .venv/bin/python benchmarks/failover.py [--quick] [--reps N] [--json]   # root, from the checkout

Two keepalived 2.2.7 nodes in network namespaces (tests/support/realka.py: node1 priority 150, node2
100, advert_int 0.1 s).  Each rep runs every case on a fresh cluster, in the opposite order every
other rep.  Both nodes of a cluster run the same notify_fifo_script:
  alive  the launcher with its worker alive: node2's BACKUP events ran just before (linger 600 s)
  idle   the launcher after an idle longer than linger: linger 1 s, node2 idle 2.5 s before the
         TERM.  Labeled by the state the run forces, whatever the launcher keeps alive meanwhile
         (the JSON's `resident` counts node2's launcher processes just before the TERM)
  shell  benchmarks/baseline-reader.sh: `while read line; do setsid flock LOCK H $line & done`
         plus keepalived's sample TERM trap; its events just before, as in `alive`
  shell_idle  the same, idle as long as in `idle` (an idle machine wakes more slowly: each launcher
         case is compared with the shell case of the same idle)
The action is the tests' recorder (bash; its first act writes a start record with $EPOCHREALTIME).

Measured per case (medians over the reps):
  total       SIGTERM to node1's keepalived -> node2's INSTANCE MASTER action's start record
  keepalived  SIGTERM -> node2's keepalived writes its first line (INSTANCE MASTER) to the FIFO:
              inotify's IN_MODIFY on the FIFO, which the kernel raises on every write to a named
              pipe (nothing is read from it); this process waits for it at SCHED_FIFO priority,
              so its stamp comes within microseconds of the event.  The event comes at the end of
              keepalived's write(), after the reader was woken: when keepalived loses its CPU in
              between (a busy machine), the stamp is late and the reader's part looks shorter;
              "tap late" counts the launcher's runs where it journaled the line before the stamp
  reader      total - keepalived: the notify_fifo_script's share, the exec of the action included
  net         reader - the start latency of the same handler spawned directly by this process
  journal     FIFO write -> the launcher's journal entry of the line (the rest of its part is the
              handoff to the worker, and the worker's start when none was there)
  lost/extra  events keepalived logged (each VI_1 transition, as an INSTANCE and a GROUP line, and
              node1's STOP lines) whose action did not run to its end / that ran more than once
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from run import git_state, log, wait_quiet  # the benchmarks' shared helpers (PYTHONPATH: benchmarks/ is the script's dir)
from support import ROOT, recorder
from support.realka import Cluster, Node, missing_prerequisite

BASELINE = str(ROOT / "benchmarks" / "baseline-reader.sh")
IN_MODIFY = 0x2  # <sys/inotify.h>
STATES_WAIT = 15.0  # s: how long a case waits for every logged event's action to end before it counts it lost


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    shell: bool  # the shell reader instead of the launcher
    linger: float
    idle: float  # s node2 stays idle after its last action ended, before node1's TERM


def cases(linger: float, idle: float) -> list[Case]:
    return [Case("alive", "launcher, worker alive (event just before, linger 600 s)", False, 600, 0),
            Case("idle", f"launcher, idle {idle:g} s > linger {linger:g} s", False, linger, idle),
            Case("shell", "shell reader (setsid flock)", True, 600, 0),
            Case("shell_idle", f"shell reader (setsid flock), idle {idle:g} s", True, 600, idle)]


def shell_reader(node: Node) -> list[str]:
    return [BASELINE, str(node.dir / "lock"), str(node.handler)]


class FifoTap:
    """The moment of the next write to a FIFO, without reading from it: inotify's IN_MODIFY.

    The wait runs at SCHED_FIFO priority (root), so the wakeup preempts whatever runs on the CPU
    and the stamp is not delayed behind the reader and keepalived competing for 2 cores; the
    priority is dropped as soon as the stamp is taken (it costs the others a few microseconds)."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch on {path} failed: {os.strerror(err)}")

    def __enter__(self) -> FifoTap:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def wait(self, timeout: float) -> float | None:
        """time.time() of the first write since the tap was made (None: none within `timeout`)."""
        with realtime():
            ready = select.select([self.fd], [], [], timeout)[0]
            t = time.time()
        return t if ready else None


@contextmanager
def realtime() -> Iterator[None]:
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        yield
    finally:
        os.sched_setscheduler(0, before[0], before[1])


def master_start(node: Node, after: float) -> float | None:
    """When node's INSTANCE MASTER action that started after `after` wrote its start record."""
    return next((a.start for a in node.actions() if (a.type, a.state) == ("INSTANCE", "MASTER") and a.start > after),
                None)


def logged_events(node: Node, stopped: bool) -> Counter[tuple[str, str]]:
    """(TYPE, STATE) of the lines keepalived wrote, from its own log: each VI_1 transition, for the
    instance and its sync group, and the STOP lines of a stopped node."""
    states = node.keepalived_states() + (["STOP"] if stopped else [])
    return Counter((type_, state) for state in states for type_ in ("INSTANCE", "GROUP"))


def lost_and_extra(nodes: list[tuple[Node, bool]]) -> tuple[int, int]:
    """Every logged event's action ended, or (lost, extra) once STATES_WAIT has passed."""
    deadline = time.monotonic() + STATES_WAIT

    def ran(node: Node) -> Counter[tuple[str, str]]:
        return Counter((a.type, a.state) for a in node.actions() if a.end is not None)

    while True:
        lost = sum(sum((logged_events(n, s) - ran(n)).values()) for n, s in nodes)
        if lost == 0 or time.monotonic() > deadline:
            return lost, sum(sum((ran(n) - logged_events(n, s)).values()) for n, s in nodes)
        time.sleep(0.05)


def failover(case: Case, keep: bool | None) -> dict[str, Any]:
    """One failover on a fresh cluster; times in ms."""
    with Cluster(2, linger=case.linger, keep=keep, script=shell_reader if case.shell else None) as c:
        n1, n2 = c.nodes
        c.start()
        c.wait_settled()
        last_end = max(a.end or 0.0 for a in n2.actions())
        time.sleep(max(0.0, last_end + case.idle - time.time()))
        idle = time.time() - last_end
        resident = sum(1 for p in n2.processes() if str(n2.conf) not in " ".join(p.cmdline()))
        with FifoTap(n2.fifo) as tap:
            term_at = n1.send_signal(signal.SIGTERM)
            written_at = tap.wait(10.0)
        n2.wait_for("node2's MASTER action", lambda: master_start(n2, term_at) is not None, timeout=10)
        start = master_start(n2, term_at)
        assert start is not None and written_at is not None, f"no write to node2's FIFO seen\n{c.diagnostics()}"
        lost, extra = lost_and_extra([(n1, True), (n2, False)])
        if lost or extra:
            log(f"{case.key}: {lost} events lost, {extra} run twice\n{c.diagnostics()}")
        journaled = next((e.time for e in n2.journal()
                          if (e.event.type, e.event.state) == ("INSTANCE", "MASTER") and e.time > term_at), None)
        return {"total_ms": (start - term_at) * 1000, "keepalived_ms": (written_at - term_at) * 1000,
                "reader_ms": (start - written_at) * 1000, "idle_before_term_s": idle, "resident": resident,
                "journaled_ms": None if journaled is None else (journaled - written_at) * 1000,
                "lost": lost, "extra": extra}


def direct_latency(n: int) -> float:
    """Median ms from Popen to the start record of the same handler spawned by this process."""
    d = Path(tempfile.mkdtemp(prefix="nl-failover-direct-"))
    try:
        handler = recorder.install(d / "handler.sh")
        lat = []
        for i in range(n):
            t0 = time.time()
            subprocess.run([str(handler), "INSTANCE", "VD", "MASTER", str(i)], check=True)
            lat.append((recorder.actions(recorder.read(d / recorder.RECORDS))[-1].start - t0) * 1000)
            time.sleep(0.05)
        return statistics.median(lat)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------------------- report

def summarize(reps: list[dict[str, Any]], keys: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    direct = statistics.median(r["direct_ms"] for r in reps)
    for k in keys:
        runs = [r[k] for r in reps]
        s: dict[str, Any] = {m: statistics.median(x[m] for x in runs)
                             for m in ("total_ms", "keepalived_ms", "reader_ms", "idle_before_term_s")}
        s["net_ms"] = s["reader_ms"] - direct
        s["reader_ms_min"], s["reader_ms_max"] = min(x["reader_ms"] for x in runs), max(x["reader_ms"] for x in runs)
        journaled = [x["journaled_ms"] for x in runs if x["journaled_ms"] is not None]
        s["journaled_ms"] = statistics.median(journaled) if journaled else None
        s["tap_late"] = sum(1 for j in journaled if j < 0)
        s["resident"] = sorted({x["resident"] for x in runs})
        s["lost"], s["extra"] = sum(x["lost"] for x in runs), sum(x["extra"] for x in runs)
        out[k] = s
    out["direct"] = {"start_latency_ms": direct}
    return out


def table(s: dict[str, dict[str, Any]], all_cases: list[Case]) -> str:
    rows = [("", "launcher", "shell reader", "ratio")]
    for case in all_cases:
        if case.shell:
            continue
        la, shell = s[case.key], s[next(c.key for c in all_cases if c.shell and c.idle == case.idle)]
        rows.append((f"({case.key}) {case.label}", "", f"idle {case.idle:g} s" if case.idle else "", ""))
        for key, what in (("total_ms", "node1 TERM -> node2 MASTER action start"),
                          ("keepalived_ms", "  keepalived's part (TERM -> FIFO write)"),
                          ("reader_ms", "  reader's part (FIFO write -> action start)"),
                          ("net_ms", "  same, net of the direct spawn")):
            ratio = la[key] / shell[key] if key != "keepalived_ms" and shell[key] > 0 else None
            rows.append((what, f"{la[key]:.2f} ms", f"{shell[key]:.2f} ms", "" if ratio is None else f"{ratio:.2f}"))
        rows.append(("  reader's part min-max over reps", f"{la['reader_ms_min']:.2f}-{la['reader_ms_max']:.2f} ms",
                     f"{shell['reader_ms_min']:.2f}-{shell['reader_ms_max']:.2f} ms", ""))
        if la["journaled_ms"] is not None:
            rows.append(("  FIFO write -> journal entry (tap late: runs)",
                         f"{la['journaled_ms']:.2f} ms ({la['tap_late']})", "", ""))
        rows.append(("  events lost / run twice (all reps)", f"{la['lost']} / {la['extra']}",
                     f"{shell['lost']} / {shell['extra']}", ""))
        rows.append(("  node2's reader+worker processes at TERM", ",".join(map(str, la["resident"])),
                     ",".join(map(str, shell["resident"])), ""))
    rows.append(("handler spawned directly: start latency", f"{s['direct']['start_latency_ms']:.2f} ms", "(same)", ""))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(r[i].ljust(w[i]) for i in range(4)).rstrip() for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 reps (about 1 min)")
    p.add_argument("--reps", type=int, help="repetitions (default 7, 3 with --quick)")
    p.add_argument("--linger", type=float, default=1.0, help="the idle case's linger, s (default 1)")
    p.add_argument("--idle", type=float, default=2.5, help="the idle case's idle before the TERM, s (default 2.5)")
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--keep", action="store_true", help="keep the clusters' directories (as NL_KEEP_REALKA=1 does)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="SEC",
                   help="before each rep, wait up to SEC for the machine to be < 10%% busy (default 0: don't)")
    args = p.parse_args()
    problem = missing_prerequisite()
    if problem:
        print(f"failover.py: {problem}", file=sys.stderr)
        return 2
    if args.idle <= args.linger:
        p.error(f"--idle {args.idle:g} must be longer than --linger {args.linger:g}")
    os.chdir("/")  # as keepalived's; `python -m notify_launcher` must not import from our cwd
    all_cases = cases(args.linger, args.idle)
    reps_n = args.reps or (3 if args.quick else 7)
    cfg = {"reps": reps_n, "linger_s": args.linger, "idle_s": args.idle, "git": git_state(),
           "cases": [asdict(c) for c in all_cases]}
    t0, load_start = time.monotonic(), os.getloadavg()
    reps: list[dict[str, Any]] = []
    for rep in range(reps_n):
        r: dict[str, Any] = {"waited_for_quiet_s": wait_quiet(args.wait_quiet) if args.wait_quiet else 0.0,
                             "direct_ms": direct_latency(10)}
        for case in all_cases if rep % 2 == 0 else all_cases[::-1]:
            log(f"rep {rep + 1}/{reps_n}: {case.key}: {case.label}")
            r[case.key] = failover(case, args.keep or None)
            x = r[case.key]
            log(f"   total {x['total_ms']:.2f} ms = keepalived {x['keepalived_ms']:.2f} + reader {x['reader_ms']:.2f};"
                f" lost {x['lost']}, extra {x['extra']}")
        reps.append(r)
    summary = summarize(reps, [c.key for c in all_cases])
    elapsed = time.monotonic() - t0
    head = (f"failover under real keepalived (2 nodes, network namespaces): {reps_n} reps, medians; "
            f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}; "
            f"{elapsed:.0f} s; load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end\n"
            f"code: {cfg['git']}; ratio = launcher / shell reader")
    text = head + "\n" + table(summary, all_cases)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps({"config": cfg, "elapsed_s": elapsed, "loadavg_start": load_start, "summary": summary,
                          "reps": reps}, indent=2))
    else:
        print(text)
    lost = sum(summary[c.key]["lost"] + summary[c.key]["extra"] for c in all_cases)
    return 1 if lost else 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)  # the clusters' teardown runs (context managers)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
