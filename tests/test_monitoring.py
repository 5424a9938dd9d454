"""What operators watch: the metrics file (parsed with prometheus_client's own parser, every value
checked against the progress records; counters that survive worker restarts and compactions) and
on_failure (once per failure, with the event's environment).  Real readers, workers and actions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from notify_launcher import metrics
from notify_launcher.progress import replay
from notify_launcher.totals import BUCKETS, Totals
from support import LAUNCHER, VI, recorder
from support.launcher import Launcher

#: VI_1 BACKUP fails, VI_1 FAULT hangs (times out), GROUP G1 MASTER kills its worker (skipped after
#: the crash, on_crash = skip); every other action passes.
MIXED = """case "$1 $2 $3" in
    "INSTANCE VI_1 BACKUP") echo "cannot demote: route busy"; exit 3 ;;
    "INSTANCE VI_1 FAULT") echo "hanging"; sleep 60 ;;
    "GROUP G1 MASTER") kill -9 $PPID; sleep 60 ;;
esac"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(path: Path) -> Samples:
    """Every sample in the file, by (name, sorted labels), through prometheus_client's parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def history(launcher: Launcher) -> dict[int, dict[str, Any]]:
    res = subprocess.run([LAUNCHER, "history", "--json", "-n", "100000", "--state-dir", str(launcher.state)],
                         capture_output=True, text=True, check=True)
    return {rec["seq"]: rec for rec in json.loads(res.stdout)}


def _value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def _worker_gone(launcher: Launcher) -> bool:
    return not (launcher.state / "worker.pid").exists()


def run_mixed(launcher: Launcher, ini: str) -> dict[int, dict[str, Any]]:
    """Through the stand-in: two rejected lines, then MIXED's five events (#1-#5, timeout 1 s,
    on_crash = skip, `ini` added to [launcher]), keepalived stops (#6); returns `history --json`
    once the worker has left (linger 1 s)."""
    launcher.handler = recorder.install(launcher.dir / "mixed.sh", records=launcher.rec, then=MIXED)
    config = launcher.dir / "nl.ini"
    config.write_text(f"[launcher]\non_crash = skip\n{ini}")
    k = launcher.keepalived("--config", str(config), "--timeout", "1")
    k.start()
    k.write_raw(b"garbage\n" + b'INSTANCE "VI_1\x1b" MASTER 100\n')  # two rejected lines
    for line in (VI.format("MASTER"), VI.format("BACKUP"), VI.format("FAULT"), 'GROUP "G1" MASTER 0',
                 VI.format("MASTER")):
        assert k.write(line)
    launcher.settle(5)
    k.stop([])
    launcher.settle(6)  # + the reader's own STOP
    launcher.wait_for("the worker to leave (linger 1 s)", lambda: _worker_gone(launcher))
    hist = history(launcher)
    results = {seq: hist[seq]["result"] for seq in hist}
    assert results == {1: "exit 0", 2: "exit 3", 3: "timed out, killed by SIGTERM", 4: "skipped after worker crash",
                       5: "exit 0", 6: "no action"}, results
    return hist


def test_metrics_file_after_passing_failing_timed_out_and_skipped_actions(launcher: Launcher) -> None:
    prom = launcher.dir / "nl.prom"
    ini = launcher.dir / "nl.ini"
    hist = run_mixed(launcher, f"metrics_file = {prom}\n")
    m = parse_metrics(prom)
    assert oct(os.stat(prom).st_mode & 0o777) == "0o644"
    durations = [hist[seq]["duration"] for seq in (1, 2, 3, 5)]
    expected: Samples = {}

    def want(metric: str, value: float, /, **labels: str) -> None:
        expected[(metric, tuple(sorted(labels.items())))] = value

    for result, count in (("ok", 2), ("failed", 1), ("timed_out", 1), ("skipped", 1)):
        want("notify_launcher_actions_total", count, result=result)
    for bound in BUCKETS:
        want("notify_launcher_action_duration_seconds_bucket", sum(d <= bound for d in durations), le=repr(bound))
    want("notify_launcher_action_duration_seconds_bucket", 4, le="+Inf")
    want("notify_launcher_action_duration_seconds_count", 4)
    total = pytest.approx(sum(durations), abs=1e-9)  # the same floats, summed in another order
    want("notify_launcher_action_duration_seconds_sum", total)  # type: ignore[arg-type]
    for state, now, count in (("MASTER", 1, 2), ("BACKUP", 0, 1), ("FAULT", 0, 1)):
        want("notify_launcher_instance_state", now, type="INSTANCE", name="VI_1", state=state)
        want("notify_launcher_transitions_total", count, type="INSTANCE", name="VI_1", state=state)
    want("notify_launcher_instance_state", 1, type="GROUP", name="G1", state="MASTER")
    want("notify_launcher_transitions_total", 1, type="GROUP", name="G1", state="MASTER")
    want("notify_launcher_last_transition_timestamp_seconds", hist[5]["t"], type="INSTANCE", name="VI_1")
    want("notify_launcher_last_transition_timestamp_seconds", hist[4]["t"], type="GROUP", name="G1")
    want("notify_launcher_queue_pending", 0)
    want("notify_launcher_oldest_pending_age_seconds", 0)
    # each run of #4's action killed its worker (one, or more when a worker died before it recorded
    # the action's start: then the next one re-runs it, and on_crash = skip applies from then on)
    crashes = len([r for r in launcher.starts() if r.seq == 4])
    want("notify_launcher_worker_crashes_total", crashes)
    want("notify_launcher_lines_rejected_total", 2)
    want("notify_launcher_last_event_timestamp_seconds", hist[6]["t"])
    for kind, count in (("stop", 1), ("reload", 0), ("eof", 0)):
        want("notify_launcher_reader_exits_total", count, kind=kind)
    assert m == expected

    # A new reader and a new worker: the counters go on from the records, not from zero.
    ini.write_text(f"[launcher]\non_crash = skip\nmetrics_file = {prom}\nmetrics_mode = 0640\n")
    k = launcher.keepalived("--config", str(ini), "--timeout", "1")
    k.start()
    k.write(VI.format("BACKUP"))
    launcher.settle(7)
    k.stop([])
    launcher.settle(8)
    m = parse_metrics(prom)
    assert oct(os.stat(prom).st_mode & 0o777) == "0o640"
    assert _value(m, "notify_launcher_actions_total", result="failed") == 2
    assert _value(m, "notify_launcher_actions_total", result="ok") == 2
    assert _value(m, "notify_launcher_reader_exits_total", kind="stop") == 2
    assert _value(m, "notify_launcher_instance_state", type="INSTANCE", name="VI_1", state="BACKUP") == 1
    assert _value(m, "notify_launcher_instance_state", type="INSTANCE", name="VI_1", state="MASTER") == 0
    assert _value(m, "notify_launcher_worker_crashes_total") == crashes
    assert _value(m, "notify_launcher_lines_rejected_total") == 2


def test_counters_do_not_go_back_when_the_progress_file_is_compacted(launcher: Launcher) -> None:
    """Enough events for the worker to compact the progress file (the results move to the history file):
    the counts of the records it dropped are carried in the compacted file, and a worker started
    after the compaction counts on from them."""
    launcher.handler = recorder.install(launcher.dir / "vi0-fails.sh", records=launcher.rec,
                                        then='[ "$2" = VI_0 ] && exit 3')
    prom = launcher.dir / "nl.prom"
    k = launcher.keepalived("--metrics-file", str(prom))
    k.start()
    lines = [f'INSTANCE "VI_{i % 10}" {"MASTER" if (i // 10) % 2 else "BACKUP"} 100' for i in range(1500)]
    for line in lines:
        assert k.write(line)
    launcher.settle(1500, timeout=300)
    launcher.wait_for("the progress compaction", lambda: "progress compacted" in launcher.log_text())
    # records were dropped from the progress file: only the carried totals count them all
    assert len(replay(str(launcher.state / "progress"), keep_ends=1 << 30).ends) < 1500

    def check(events: int, failed: int) -> None:
        m = parse_metrics(prom)
        assert _value(m, "notify_launcher_actions_total", result="failed") == failed
        assert _value(m, "notify_launcher_actions_total", result="ok") == events - failed
        assert _value(m, "notify_launcher_action_duration_seconds_count") == events
        transitions = sum(v for (name, _), v in m.items() if name == "notify_launcher_transitions_total")
        assert transitions == events

    check(1500, 150)
    first = launcher.wait_standby()
    os.kill(first, signal.SIGTERM)  # the reader replaces its standby: a new worker replays the compacted file
    launcher.wait_for("a new standby worker", lambda: launcher.wait_standby() != first)
    k.write('INSTANCE "VI_0" MASTER 100')
    launcher.settle(1501)
    check(1501, 151)
    k.stop([])


def _hook(path: Path, records: Path, then: str = "") -> Path:
    """An on_failure command: one JSON line per run (its arguments and NL_* environment) in `records`,
    then shell code `then`."""
    path.write_text(f"""#!/bin/sh
{sys.executable} -c 'import json, os, sys; print(json.dumps({{"argv": sys.argv[1:], "env": {{k: v for k, v in \
os.environ.items() if k.startswith("NL_")}}}}))' "$@" >> {records}
{then}
""")
    path.chmod(0o755)
    return path


def test_on_failure_runs_once_per_failure_with_the_events_environment(launcher: Launcher) -> None:
    """It runs after the failed, the timed-out and the skipped action (never after a passing one),
    from the most specific [match] rule; its own failure and its own timeout are logged, never
    retried, and the queue goes on."""
    runs = launcher.dir / "on-failure.jsonl"
    hook = _hook(launcher.dir / "on-failure.sh", runs, then='[ "$NL_STATE" = FAULT ] && sleep 60\nexit 1')
    hist = run_mixed(launcher, f"on_failure = {hook} default\non_failure_timeout = 2\n"
                               f"[match GROUP * *]\non_failure = {hook} group-rule\n")
    got = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [g["env"]["NL_SEQ"] for g in got] == ["2", "3", "4"], got  # once per failure, in order
    env = {int(g["env"]["NL_SEQ"]): g["env"] for g in got}
    argv = {int(g["env"]["NL_SEQ"]): g["argv"] for g in got}
    assert argv == {2: ["default", "INSTANCE", "VI_1", "BACKUP", "100"],
                    3: ["default", "INSTANCE", "VI_1", "FAULT", "100"],
                    4: ["group-rule", "GROUP", "G1", "MASTER", "0"]}
    base = {"NL_TYPE": "INSTANCE", "NL_NAME": "VI_1", "NL_PRIORITY": "100", "NL_VS": ""}
    assert env[2] == {**base, "NL_STATE": "BACKUP", "NL_SEQ": "2", "NL_RESULT": "failed", "NL_EXIT": "3",
                      "NL_DETAIL": "exit 3", "NL_OUTPUT": "cannot demote: route busy"}
    assert env[3] == {**base, "NL_STATE": "FAULT", "NL_SEQ": "3", "NL_RESULT": "timed_out", "NL_EXIT": "",
                      "NL_DETAIL": hist[3]["result"], "NL_OUTPUT": "hanging"}
    assert env[4] == {"NL_TYPE": "GROUP", "NL_NAME": "G1", "NL_STATE": "MASTER", "NL_PRIORITY": "0", "NL_VS": "",
                      "NL_SEQ": "4", "NL_RESULT": "skipped", "NL_EXIT": "", "NL_DETAIL": "skipped after worker crash",
                      "NL_OUTPUT": ""}
    log = launcher.log_text()
    assert re.search(r'#2 INSTANCE "VI_1" BACKUP 100 \| on_failure FAILED: exit 1 after [\d.]+s \(not retried\)', log)
    assert re.search(r'#3 INSTANCE "VI_1" FAULT 100 \| on_failure FAILED: timed out, killed by SIGTERM after', log)
    assert re.search(r'#4 GROUP "G1" MASTER 0 \| on_failure started \(skipped\): ', log)
    assert [r.seq for r in launcher.starts()][-1] == 5  # the queue went on after each


def test_a_notice_is_a_transition_but_not_a_state(tmp_path: Path) -> None:
    """MASTER_RX_LOWER_PRI comes while the instance stays MASTER: counted, but instance_state and the
    last transition still say MASTER (the fold and the rendering, without processes)."""
    totals = Totals()
    for seq, state in enumerate(("MASTER", "MASTER_RX_LOWER_PRI"), 1):
        totals.fold({"op": "end", "seq": seq, "t": float(seq), "key": "INSTANCE VI_1", "event": "-", "state": state,
                     "result": "no action", "ok": True})
    path = tmp_path / "nl.prom"
    metrics.write(str(path), metrics.render(totals, 0, 0.0, 0), 0o644)
    m = parse_metrics(path)
    assert _value(m, "notify_launcher_transitions_total", type="INSTANCE", name="VI_1", state="MASTER_RX_LOWER_PRI") == 1
    assert _value(m, "notify_launcher_instance_state", type="INSTANCE", name="VI_1", state="MASTER") == 1
    assert ("notify_launcher_instance_state", (("name", "VI_1"), ("state", "MASTER_RX_LOWER_PRI"),
                                               ("type", "INSTANCE"))) not in m
    assert _value(m, "notify_launcher_last_transition_timestamp_seconds", type="INSTANCE", name="VI_1") == 1.0
