"""What scenario `latency` (scenario.sh) recorded, per phase: one parser for the benchmark
(benchmarks/systemd_states.py: the figures) and the test (tests/test_systemd.py: once, in order).

The scenario writes `write PHASE I EPOCH` into /results/writes just before it writes line I of
PHASE into keepalived's FIFO (`INSTANCE "LAT_PHASE" STATE I`; phase `direct`: just before it
spawns the handler itself with those arguments); the handler records its start (support.recorder).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from support import recorder
from support.systemd.harness import Result


@dataclass
class Phase:
    written: int = 0  # lines written (or handler spawns, phase direct)
    missing: int = 0  # written lines whose action never started
    twice: int = 0  # extra starts of a line's action
    in_order: bool = True  # the actions started in the order their lines were written
    latency_ms: list[float] = field(default_factory=list)  # write -> the action's start, per line

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latency_ms) if self.latency_ms else None

    def add(self, other: Phase) -> None:
        """Pool another boot's phase into this one."""
        self.written += other.written
        self.missing += other.missing
        self.twice += other.twice
        self.in_order = self.in_order and other.in_order
        self.latency_ms += other.latency_ms


def phases(res: Result) -> dict[str, Phase]:
    """Every phase of one boot, in the order the scenario ran them."""
    writes: dict[str, dict[int, float]] = {}
    for line in res.text("writes").splitlines():
        _, phase, i, t = line.split()
        writes.setdefault(phase, {})[int(i)] = float(t)
    starts: dict[str, list[tuple[int, float]]] = {}
    for r in recorder.parse(res.text("records")):
        name = r.name.strip('"') if r.kind == "start" and len(r.args) >= 4 else ""
        if name.startswith("LAT_") and r.time is not None:
            starts.setdefault(name[4:], []).append((int(r.priority), r.time))
    out: dict[str, Phase] = {}
    for phase, written in writes.items():
        order = [i for i, _ in starts.get(phase, [])]
        first = dict(reversed(starts.get(phase, [])))
        out[phase] = Phase(len(written), len(set(written) - set(first)), len(order) - len(set(order)),
                           order == sorted(order), [(first[i] - written[i]) * 1000 for i in sorted(written) if i in first])
    return out
