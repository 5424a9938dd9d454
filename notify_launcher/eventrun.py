"""One event's action: its commands one after the other, each as its user, each contained
(containment.py), with the settings the event was journaled under; its start and end recorded."""

from __future__ import annotations

TYPE_CHECKING = False

import time
from collections import deque

from notify_launcher import actions
from notify_launcher.config import Command, Settings
from notify_launcher.containment import Containment
from notify_launcher.following import Following
from notify_launcher.identity import ticks
from notify_launcher.journal import Entry
from notify_launcher.ledger import Ledger, end_of
from notify_launcher.onfailure import OUTPUT_TAIL, Ended, OnFailureRunner

if TYPE_CHECKING:
    from notify_launcher.records import StartRecord


class EventRunner:
    """`run(entry, settings)` for each event the drain takes up; its on_failure is left due."""

    def __init__(self, following: Following, ledger: Ledger, on_failure: OnFailureRunner, containment: Containment,
                 worker: int, environ: dict[str, str]) -> None:
        self.following, self.ledger, self.on_failure = following, ledger, on_failure
        self.containment, self.worker, self.environ = containment, worker, environ
        self.worker_start = 0  # set by the worker once it knows its own start time

    def run(self, entry: Entry, settings: Settings) -> bool:
        """The event's commands one after the other (or why none runs), its end recorded: the first
        failed command's result, else the last one's.  True when it completed: ended ok, or nothing
        was to run."""
        seq, event, log = entry.seq, entry.event, self.following.log
        commands, timeout = settings.action_for(event)
        if not commands:
            quiet = " (a quiet state: name it in a [match] rule to run something)" \
                if event.state in settings.quiet_states else ""
            log.info(seq, event, f"no action configured for this event{quiet}")
            self.ledger.finish(end_of(entry, "no action", ok=True, worker=self.worker), event)
            return True
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL)  # for on_failure

        def output(stream: str, text: str) -> None:
            log.info(seq, event, f"{stream}: {text}")
            tail.append(text)

        results = [self._command(entry, command, timeout, settings.kill_grace, settings.output_limit, output,
                                 f" ({number} of {len(commands)})" if len(commands) > 1 else "")
                   for number, command in enumerate(commands, 1)]
        result = next((r for r in results if not r.ok), results[-1])
        end = end_of(entry, result.describe(), ok=result.ok, worker=self.worker)
        end["duration"] = round(sum(r.duration for r in results), 6)
        end["exit"], end["signal"], end["timed_out"] = result.exit_code, result.signal, result.timed_out
        stalled = sum(r.stalled for r in results)
        if stalled:
            end["stalled"] = round(stalled, 3)
        self.ledger.finish(end, event)
        self.on_failure.due(Ended(entry, end, tail, settings))
        return result.ok

    def _command(self, entry: Entry, command: Command, timeout: float, kill_grace: float, output_limit: int,
                 output: actions.Output, which: str) -> actions.Result:
        """One of the event's commands, as its user if it names one, with its start recorded."""
        seq, event, log = entry.seq, entry.event, self.following.log
        delay = time.time() - entry.time  # for the log line only
        argv = command.for_event(event)
        as_user = "" if command.user is None else f" as {command.user}" + (f":{command.group}" if command.group else "")
        try:
            ids = command.run_as()
        except KeyError as exc:
            result = actions.Result(None, None, 0.0, error=f"{exc.args[0]} (it did when the configuration was read)")
        else:
            box = self.containment.box(seq)

            def started(pid: int) -> None:
                """Recorded and logged after the spawn, so nothing of ours delays the action.  Its start
                time is bracketed by two clock reads (identity.ticks: reading /proc while the child is
                in exec() would wait); it tells the action from a later process with the same pid."""
                start: StartRecord = {"op": "start", "seq": seq, "t": time.time(), "key": event.key,
                                      "event": str(event), "state": event.state, "pid": pid,
                                      "pid_start_min": spawning, "pid_start_max": ticks(), "worker": self.worker,
                                      "worker_start": self.worker_start}
                if box.cgroup is not None:
                    start["cgroup"] = box.cgroup  # for a recovering worker, whichever cgroup it is in
                self.ledger.record(start, event)
                log.info(seq, event, f"action started{which}: {' '.join(argv)}{as_user} (pid {pid}, timeout "
                                     f"{timeout:g}s, queued {delay * 1000:.1f} ms)")

            env = actions.event_env(entry, command.base_environment(self.environ))
            spawning = ticks()
            result = actions.run_action(argv, env, timeout, kill_grace, output=output,
                                        note=lambda text: log.warn(seq, event, text), started=started, box=box,
                                        output_limit=output_limit, ids=ids)
        log.line("INFO" if result.ok else "ERROR", seq, event,
                 f"action ended{which}: {result.describe()} after {result.duration:.3f}s")
        return result


