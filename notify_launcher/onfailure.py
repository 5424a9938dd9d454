"""The `on_failure` command: run once after an event's action failed, timed out or was skipped.

It runs after the end record and the metrics file, so nothing -- a crash of the worker included --
ever runs it twice; detached and with its own timeout (its SIGKILL at on_failure_timeout), so it
delays the next event by at most that.  Its own failure is logged, never retried.  Not run when
coalescing superseded the event: that is by design.
"""

from __future__ import annotations

TYPE_CHECKING = False


from notify_launcher import actions
from notify_launcher.config import Settings
from notify_launcher.containment import Containment
from notify_launcher.following import Following
from notify_launcher.journal import Entry
from notify_launcher.totals import outcome

if TYPE_CHECKING:
    from collections.abc import Iterable

    from notify_launcher.records import EndRecord

OUTPUT_TAIL, OUTPUT_TAIL_CHARS = 20, 16384  # the action's last output lines given to on_failure (NL_OUTPUT)


class Ended:
    """An event that just ended, with the last lines its action printed (for NL_OUTPUT) and the
    settings it ran under (None: the newest)."""

    __slots__ = ("entry", "end", "output", "settings")

    def __init__(self, entry: Entry, end: EndRecord, output: Iterable[str] = (),
                 settings: Settings | None = None) -> None:
        self.entry, self.end, self.output, self.settings = entry, end, output, settings


class OnFailureRunner:
    """`due(ended)` after each end record; `run()` once the record and the metrics file are written."""

    def __init__(self, following: Following, containment: Containment, environ: dict[str, str]) -> None:
        self.following, self.containment, self.environ = following, containment, environ
        self._due: Ended | None = None

    def due(self, ended: Ended) -> None:
        self._due = ended

    def run(self) -> None:
        """Run the on_failure command for the event last given to `due`, if it failed."""
        ended, self._due = self._due, None
        if ended is None:
            return
        settings, log = ended.settings or self.following.settings, self.following.log
        entry, end = ended.entry, ended.end
        command = settings.on_failure_for(entry.event)
        result = outcome(end)
        if not command or end["ok"] or result is None:
            return
        seq, event = entry.seq, entry.event
        argv = [*command, *event.fields()]
        exit_code = end.get("exit")
        env = dict(actions.event_env(entry, self.environ), NL_RESULT=result,
                   NL_EXIT="" if exit_code is None else str(exit_code), NL_DETAIL=end["result"],
                   NL_OUTPUT="\n".join(ended.output)[-OUTPUT_TAIL_CHARS:])
        timeout = settings.on_failure_timeout
        grace = min(settings.kill_grace, timeout / 10)
        try:
            hook = actions.run_action(
                argv, env, timeout - grace, grace,
                output=lambda stream, text: log.info(seq, event, f"on_failure {stream}: {text}"),
                note=lambda text: log.warn(seq, event, f"on_failure: {text}"),
                started=lambda pid: log.info(seq, event, f"on_failure started ({result}): {' '.join(argv)} "
                                                         f"(pid {pid}, timeout {timeout:g}s)"),
                box=self.containment.box(seq, "on_failure"), output_limit=settings.output_limit)
        except Exception as exc:
            log.exception(seq, event, "on_failure failed inside the launcher (not retried)", exc)
            return
        if hook.ok:
            log.info(seq, event, f"on_failure ended: {hook.describe()} after {hook.duration:.3f}s")
        else:
            log.error(seq, event, f"on_failure FAILED: {hook.describe()} after {hook.duration:.3f}s (not retried)")
