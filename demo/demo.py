"""notify-launcher demo: a slow action survives keepalived's stop, and actions run one at a time, in order.

As root with keepalived installed: two REAL keepalived 2.2.7 nodes, each in its own network
namespace (tests/support/realka.py), fail over: node1 (priority 150) is MASTER, node2 (100) BACKUP; then
node1's keepalived gets SIGTERM (what `systemctl stop keepalived` does).  keepalived kills its
notify_fifo_script at +1 s; the launcher's reader leaves long before, and node1's 3 s STOP action
runs to its end in the detached worker, after keepalived itself has exited.  node2 takes over.

Otherwise (not root, no keepalived, no network namespaces): the keepalived stand-in
(tests/support/standin.py) drives one launcher the way keepalived 2.2.7 would, with the same slow actions.

Prints a timeline of every action (node, event, start, end, relative to the demo's start), checks
what it claims, then prints each node's launcher log.  Exit status 0 only if every check held.

    sh scripts/demo [--standin]                                  # from the checkout: sets up, then runs
    PYTHONPATH=tests .venv/bin/python demo/demo.py [--standin]  # the same, set up already

PYTHONPATH=tests: the test support package `support` (tests/support/), as pytest has it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import LAUNCHER, processes, realka
from support.realka import KILL_AFTER, Cluster, Node
from support.standin import Keepalived

MASTER_SECONDS = 2
STOP_SECONDS = 3


@dataclass
class Report:
    """Timeline entries and checks, printed at the end."""

    t0: float
    entries: list[tuple[float, str, str]] = field(default_factory=list)
    checks: list[tuple[bool, str]] = field(default_factory=list)

    def at(self, t: float, who: str, what: str) -> None:
        self.entries.append((t, who, what))

    def actions(self, node: Node, who: str) -> None:
        for a in node.actions():
            event = f"#{a.seq} {' '.join(a.args)}"
            self.at(a.start, who, f"{event:<28} action started")
            if a.end is not None:
                self.at(a.end, who, f"{event:<28} action ended after {a.end - a.start:.3f} s")

    def check(self, ok: bool, text: str) -> None:
        self.checks.append((ok, text))

    def print_timeline(self) -> None:
        print("\nTimeline (seconds since the demo started):")
        for t, who, what in sorted(self.entries, key=lambda e: e[0]):
            print(f"  {t - self.t0:+8.3f}  {who:<8} {what}")

    def print_checks(self) -> bool:
        print("\nWhat the demo shows:")
        for ok, text in self.checks:
            print(f"  [{'ok' if ok else 'FAILED'}] {text}")
        return all(ok for ok, _ in self.checks)


def print_logs(nodes: list[tuple[str, Node]], tmp: Path) -> None:
    for who, node in nodes:
        print(f"\n----- {who}: launcher log ({node.log.name}; temp paths shown as <tmp>) -----")
        print(node.log_text().replace(str(tmp), "<tmp>"), end="")


def ended_ok(node: Node, seq: int) -> bool:
    return re.search(rf"#{seq} .* \| action ended: exit 0 after", node.log_text()) is not None


# --- two real keepalived nodes -----------------------------------------------------------------


def real_demo() -> bool:
    print("Two real keepalived nodes, each in its own network namespace, joined by a veth pair;\n"
          f"VIP {realka.VIP}.  Each runs notify-launcher as its notify_fifo_script, configured as\n"
          "keepalived.conf.example shows.\n"
          "Every action appends start/end lines to a file; MASTER "
          f"actions take {MASTER_SECONDS} s, node1's STOP action takes {STOP_SECONDS} s.\n")
    with Cluster(2) as c:
        n1, n2 = c.nodes
        for n in c.nodes:
            n.sleep_on("INSTANCE", "MASTER", MASTER_SECONDS)
        n1.sleep_on("INSTANCE", "STOP", STOP_SECONDS)
        rep = Report(time.time())
        print("Starting keepalived on node1 (priority 150) and node2 (priority 100) ...", flush=True)
        c.start()
        for n in c.nodes:
            rep.at(n.started_at, n.name, "keepalived started")
        c.wait_settled(timeout=20)
        rep.check(n1.has_vip() and not n2.has_vip() and n1.instance_states()[-1] == "MASTER"
                  and n2.instance_states()[-1] == "BACKUP",
                  "node1 became MASTER (it holds the VIP), node2 BACKUP; their actions said so")
        before = len(n1.actions())

        print("Sending SIGTERM to node1's keepalived (what `systemctl stop keepalived` does) ...", flush=True)
        stop = n1.term()
        rep.at(stop.term_at, "node1", "keepalived got SIGTERM (it SIGKILLs its notify_fifo_script at +1 s)")
        if stop.reader_gone_after is not None:
            rep.at(stop.term_at + stop.reader_gone_after, "node1",
                   f"notify-launcher reader exited ({stop.reader_gone_after * 1000:.0f} ms after SIGTERM)")
        if stop.keepalived_exit_after is not None:
            rep.at(stop.term_at + stop.keepalived_exit_after, "node1", "keepalived exited")
        n2.wait_for("node2's MASTER action", lambda: any(
            a.type == "INSTANCE" and a.state == "MASTER" and a.start > stop.term_at and a.end is not None
            for a in n2.actions()), timeout=20)
        n1.wait_for("node1's STOP actions", lambda: len(n1.actions()) >= before + 2
                    and all(a.end is not None for a in n1.actions()), timeout=20)
        n1.wait_idle()
        n2.wait_idle()

        rep.actions(n1, "node1")
        rep.actions(n2, "node2")
        gone = stop.reader_gone_after
        rep.check(gone is not None and gone < KILL_AFTER,
                  f"node1's reader caught the STOP lines and exited {fmt_ms(gone)} after SIGTERM, "
                  f"before keepalived's SIGKILL at +{KILL_AFTER:g} s")
        stops = [a for a in n1.actions()[before:] if a.type == "INSTANCE" and a.state == "STOP"]
        ka_exit = None if stop.keepalived_exit_after is None else stop.term_at + stop.keepalived_exit_after
        end = stops[0].end if stops else None
        ok = end is not None and ka_exit is not None and end > ka_exit and ended_ok(n1, stops[0].seq) \
            and end - stops[0].start >= STOP_SECONDS
        rep.check(ok, f"node1's {STOP_SECONDS} s STOP action ran to its end (exit 0), "
                      + (f"{end - ka_exit:.1f} s after keepalived itself had exited"
                         if end is not None and ka_exit is not None else "outliving keepalived"))
        masters = [a for a in n2.actions() if a.type == "INSTANCE" and a.state == "MASTER" and a.start > stop.term_at]
        rep.check(bool(masters) and n2.has_vip() and ended_ok(n2, masters[0].seq),
                  "node2 took over: it holds the VIP and its MASTER action ran"
                  + (f", starting {(masters[0].start - stop.term_at) * 1000:.0f} ms after node1's SIGTERM"
                     if masters else ""))
        problems = [f"{n.name}: {p}" for n in c.nodes for p in n.order_problems()]
        rep.check(not problems, "on each node every event's action ran once, one at a time, in keepalived's order"
                  + "".join(f"\n         {p}" for p in problems))
        rep.print_timeline()
        good = rep.print_checks()
        print_logs([("node1", n1), ("node2", n2)], c.dir)
    return good


def fmt_ms(seconds: float | None) -> str:
    return "(never)" if seconds is None else f"{seconds * 1000:.0f} ms"


# --- the stand-in -------------------------------------------------------------------------------


def standin_demo() -> bool:
    print("The keepalived stand-in (tests/support/standin.py) plays keepalived 2.2.7: it writes the lines,\n"
          "stops the script with SIGTERM, writes the STOP lines after it and SIGKILLs at +1 s.\n"
          f"MASTER actions take {MASTER_SECONDS} s, STOP actions {STOP_SECONDS} s; the stop comes while "
          "the MASTER action runs.\n")
    tmp = Path(tempfile.mkdtemp(prefix="nl-demo-"))
    node = Node(1, 150, "", tmp / "node1")
    k = None
    try:
        node.write_files(linger=1, timeout=60)
        node.sleep_on("INSTANCE", "MASTER", MASTER_SECONDS)
        node.sleep_on("INSTANCE", "STOP", STOP_SECONDS)
        rep = Report(time.time())
        k = Keepalived([LAUNCHER, "--config", str(node.ini)], str(node.fifo))
        k.start()
        rep.at(time.time(), "stand-in", "stand-in started notify-launcher")
        lines = ['GROUP "G1" BACKUP 0', 'INSTANCE "VI_1" BACKUP 150', 'INSTANCE "VI_1" MASTER 150', 'GROUP "G1" MASTER 0']
        for line in lines:
            k.write(line)
            rep.at(time.time(), "stand-in", f"wrote {line}")
            time.sleep(0.05)
        node.wait_for("the MASTER action", lambda: any(a.state == "MASTER" for a in node.actions()), timeout=20)
        time.sleep(0.3)
        t_term = time.time()
        rep.at(t_term, "stand-in", "SIGTERM to the script, then the STOP lines")
        report = k.stop(['INSTANCE "VI_1" STOP 150', 'GROUP "G1" STOP 0'])
        k = None
        rep.at(t_term + report.exit_after, "stand-in", "the reader " + (
            "was SIGKILLed at +1 s" if report.killed else f"exited {report.exit_after * 1000:.0f} ms after SIGTERM"))
        node.wait_for("the STOP actions", lambda: len(node.actions()) >= 6
                      and all(a.end is not None for a in node.actions()), timeout=30)
        node.wait_idle()
        rep.actions(node, "node1")
        rep.check(not report.killed and report.exit_after < KILL_AFTER,
                  f"the reader caught the STOP lines and exited {report.exit_after * 1000:.0f} ms after SIGTERM, "
                  f"before the SIGKILL at +{KILL_AFTER:g} s")
        master = next((a for a in node.actions() if a.type == "INSTANCE" and a.state == "MASTER"), None)
        rep.check(master is not None and master.end is not None and master.end > t_term + KILL_AFTER
                  and ended_ok(node, master.seq),
                  f"the {MASTER_SECONDS} s MASTER action running at the stop finished (exit 0) after the script was gone")
        stop = next((a for a in node.actions() if a.type == "INSTANCE" and a.state == "STOP"), None)
        rep.check(stop is not None and stop.end is not None and stop.end - stop.start >= STOP_SECONDS
                  and ended_ok(node, stop.seq), f"the {STOP_SECONDS} s STOP action ran to its end (exit 0)")
        problems = node.order_problems()
        rep.check(not problems and len(node.actions()) == 6,
                  "all 6 events' actions ran once, one at a time, in the order written"
                  + "".join(f"\n         {p}" for p in problems))
        rep.print_timeline()
        good = rep.print_checks()
        print_logs([("node1", node)], tmp)
        return good
    finally:
        if k is not None and k.proc is not None and k.proc.poll() is None:
            k.stop([])
        processes.end_all(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--standin", action="store_true", help="use the keepalived stand-in even if real keepalived can run")
    args = p.parse_args()
    reason = "--standin given" if args.standin else realka.missing_prerequisite()
    t0 = time.monotonic()
    try:
        if reason is None:
            print("== notify-launcher demo: real keepalived failover ==\n")
            good = real_demo()
        else:
            print(f"== notify-launcher demo: keepalived stand-in ==\n\nReal keepalived is not used: {reason}.\n")
            good = standin_demo()
    except (AssertionError, RuntimeError, OSError) as exc:
        print(f"\nDEMO FAILED: {exc}")
        return 1
    print(f"\nDemo {'succeeded' if good else 'FAILED'} in {time.monotonic() - t0:.1f} s; everything it started "
          "is stopped and its temp files are gone.")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
