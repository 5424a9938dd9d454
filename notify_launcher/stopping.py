"""After keepalived's SIGTERM: is keepalived stopping, or is this reader only being replaced?

The answer decides whether `stop_action` runs, so it is made here and nowhere else.  keepalived
sends the same SIGTERM on a stop and on a reload (docs/keepalived.md, "Shutdown" and "Reload"):

- on a stop it then writes a STOP line per instance and group, into the same FIFO, and starts no
  other reader: the reader must catch those lines, then journal `READER reader STOP`;
- on a reload it closes the FIFO (EOF, unless the FIFO is shared) and starts the same command
  again from the same parent, 17-34 ms later, on a new FIFO or on this very one: the reader must
  leave the FIFO to that reader at once and journal `READER reader RELOAD`;
- when the keepalived child that started the reader dies (a crash; keepalived starts it again,
  and it the next reader), the SIGTERM is that child's parent-death signal, or nothing comes at
  all (owner.py): no STOP line follows, and the reader takes what the pipe holds, leaves at once
  and journals `READER reader RELOAD` too.

`StopClassifier` holds what the reader has seen since SIGTERM and gives two answers: `done()`
(may the reader leave now?) and `verdict()` (what its leaving means), and `at_start()` for a SIGTERM
that came before the reader read anything.  It only reads /proc.
"""

from __future__ import annotations

import os
import time

from notify_launcher import identity
from notify_launcher.commands import COMMANDS
from notify_launcher.events import Event
from notify_launcher.owner import starter_of
from notify_launcher.value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from notify_launcher.identity import ProcessId

FINAL_STATES = frozenset({"STOP", "DELETED"})
#: After a SIGTERM that came while we started: how long keepalived may take to start the next reader
#: if it is reloading (17-34 ms seen, docs/keepalived.md "Reload"); its STOP lines wait in the pipe.
SIBLING_WAIT = 0.1
#: After SIGTERM, once every instance/group we know has reported STOP: how long the FIFO must stay
#: quiet before we leave, so a STOP line of one we never saw, written in the same burst, is caught.
STOP_QUIET = 0.03
#: After SIGTERM: how often to look for the next reader keepalived starts when it reloads (a scan of
#: /proc), so that we leave it the FIFO at once instead of reading beside it until the grace is over.
SIBLING_CHECK = 0.02
#: The same between the lines of one long read (a /proc scan costs 2-10 ms: a read of ~100 lines
#: must not spend its time there).
SIBLING_CHECK_IN_READ = 0.1


def later_sibling(pid: int, starter: int | None = None, keepalived: ProcessId | None = None) -> int | None:
    """A process started after `pid` by the same keepalived process (`starter`, as seen when `pid`
    started; default: `pid`'s now), in the same session, that is the same reader (`same_reader`), if
    any: the script keepalived starts again when it reloads (docs/keepalived.md, "Reload").  With
    `keepalived` (its main process, while it runs): also one started by another child of keepalived
    -- the child it started in place of ours that died, or its other child when a reload moves the
    script between the VRRP and checker children (an edited keepalived.conf: global notify_fifo to
    vrrp_ and lvs_notify_fifo on the same path, or back).

    This, not the FIFO, tells a reload from a stop after a SIGTERM without EOF: keepalived may
    reuse the very same FIFO on reload, and a FIFO's timestamps move with every write.  The starter
    is our parent, or under `sh -c` (keepalived's checker with `--all`) our process group leader's
    parent (owner.starter_of).  The session rules out our workers: forked (so with our command line)
    into a session of their own, they become children of keepalived's main process (a child
    subreaper); a worker's first fork, before its setsid(), is still in ours, but it is our child,
    which no next reader is.  Only /proc/PID/stat is read for every process; a command line only
    for the starter's later children.  Of several (two reloads before we looked), the first started:
    keepalived sent our SIGTERM before it, which is what `StopClassifier._found` counts on -- /proc's
    order is the pids', and pids wrap."""
    me = identity.stat(pid)
    if starter is None:
        starter = starter_of(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return None
    if me is None or starter is None:
        return None
    found: list[tuple[int, int]] = []  # (start, pid) of each: the first started is the next reader
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == pid:
            continue
        other = identity.stat(int(name))
        if other is None or other.session != me.session or (other.start, int(name) > pid) < (me.start, True):
            continue  # another session, or started before us (a clock tick is 10 ms: pids break ties)
        if other.ppid == pid:
            continue  # our own fork: a worker being detached, before its setsid()
        if other.ppid != starter and not _started_by(int(name), starter, keepalived):
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if same_reader(fh.read(), cmdline):
                    found.append((other.start, int(name)))
        except OSError:
            continue
    return min(found)[1] if found else None


def same_reader(a: bytes, b: bytes) -> bool:
    """Two command lines (/proc/PID/cmdline) start the same reader: the same command, or both
    notify-launcher readers of the same FIFO (keepalived's last argument), however each was started
    and whatever its options -- an upgrade or a rollback changes the checkout wrapper's code, a
    deploy switched behind a symlink the checkout path and its .venv's interpreter, a reinstall the
    console script for the wrapper, and an operator who edits notify_fifo_script's options (a
    --state-dir, --config or --log-level) and reloads the options: a reload onto any of them is
    still a reload, and taking it for a stop would run stop_action while keepalived runs on.
    keepalived starts one script per FIFO, so the FIFO names the reader, however its path is spelled.
    Another program, or a reader of another FIFO, is not the same reader."""
    if a == b:
        return True
    fifo, other = reader_fifo(a), reader_fifo(b)
    return fifo is not None and other is not None and _same_fifo(fifo, other)


def _same_fifo(a: bytes, b: bytes) -> bool:
    """Two spellings of one FIFO: the same path, the same file (an edited keepalived.conf that now
    says /run for /var/run, a link to it), or the same path once links are resolved (it is gone)."""
    if a == b:
        return True
    try:
        sa, sb = os.stat(a), os.stat(b)
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def reader_fifo(cmdline: bytes) -> bytes | None:
    """The FIFO of the notify-launcher reader /proc/PID/cmdline `cmdline` runs (its last argument);
    None if it runs no reader (another program, or one of the operator commands)."""
    args = reader_args(cmdline)
    if not args or args[0].decode(errors="replace") in COMMANDS:
        return None
    return args[-1]


def reader_args(cmdline: bytes) -> list[bytes] | None:
    """The arguments keepalived gave a notify-launcher reader, from its /proc/PID/cmdline; None if it
    is none.  A reader is a Python interpreter (with any options of its own) running one of: the
    checkout wrapper's `-c CODE [CHECKOUT] notify_launcher ARGS` (bin/notify-launcher: ARGS follow
    its word notify_launcher), `-m notify_launcher ARGS`, or a script named notify-launcher (the
    console script pip or Debian's dh_python3 installs: `/usr/bin/python3 /usr/bin/notify-launcher ARGS`)."""
    argv = cmdline.split(b"\0")[:-1]
    if not argv or not os.path.basename(argv[0]).startswith(b"python"):
        return None
    at = 1
    while at < len(argv) and argv[at].startswith(b"-") and argv[at] not in (b"-", b"--"):
        word, at = argv[at], at + 1
        if word.startswith(b"--"):  # a long option: only --check-hash-based-pycs takes a value
            at += word == b"--check-hash-based-pycs"
            continue
        for i in range(1, len(word)):
            flag = word[i:i + 1]
            if flag not in (b"c", b"m", b"W", b"X"):  # the options that take a value, here or next
                continue
            value = word[i + 1:]
            if not value and at < len(argv):
                value, at = argv[at], at + 1
            if flag == b"c":
                rest = argv[at:]
                return rest[rest.index(b"notify_launcher") + 1:] if b"notify_launcher" in rest else None
            if flag == b"m":
                return argv[at:] if value in (b"notify_launcher", b"notify_launcher.__main__") else None
            break
    at += at < len(argv) and argv[at] == b"--"
    return argv[at + 1:] if at < len(argv) and os.path.basename(argv[at]) == b"notify-launcher" else None


def _started_by(pid: int, starter: int, keepalived: ProcessId | None) -> bool:
    """`pid`'s starter is `starter`, or (with `keepalived`, running) another child of keepalived's
    main process, or that process itself: a reader under `sh -c` whose shell keepalived's SIGTERM
    killed is re-parented to it (a child subreaper), the way to its starter lost."""
    other = starter_of(pid)
    if other == starter:
        return True
    if keepalived is None or other is None:
        return False
    st = identity.stat(other)
    return other == keepalived.pid or (st is not None and st.ppid == keepalived.pid)


class Verdict(Value):
    """What the reader's end means: `state` is journaled as `READER reader STATE`; only "STOP" is
    keepalived stopping (and runs `stop_action`).  `why` is for the log."""

    __slots__ = ("state", "why")

    def __init__(self, state: str, why: str) -> None:
        self.state = state  # "STOP", "RELOAD" or "EOF"
        self.why = why

    @property
    def keepalived_stops(self) -> bool:
        return self.state == "STOP"


class StopClassifier:
    """What the reader saw since SIGTERM, and what it means (see the module docstring).

    `next_reader` finds the reader keepalived started after us (default: `later_sibling` of this
    process); the clock is the caller's (monotonic seconds), so a test drives it."""

    def __init__(self, grace: float, term_at: float | None = None,
                 next_reader: Callable[[], int | None] = lambda: later_sibling(os.getpid()),
                 respawn: Callable[[bool], str | None] = lambda term: None,
                 unlinked_at: Callable[[], float | None] = lambda: None,
                 known: Callable[[], dict[str, str]] = dict) -> None:
        self.grace = grace
        self.respawn = respawn  # owner.Starter.respawn: why our end is a keepalived child's restart
        self.respawned: str | None = None  # that reason, once found: we leave at once, as a RELOAD
        self._respawn_checked = False
        self.term_at = term_at
        self.next_reader = next_reader
        self.unlinked_at = unlinked_at  # when keepalived unlinked our FIFO (fifo.Fifo.unlinked_at)
        self.known = known  # each name's last state the workers finished, read once stopping
        self._known_read = False
        self.states: dict[str, str] = {}  # INSTANCE/GROUP key -> last state, to know when all have STOPped
        self.last_line_at = 0.0
        self.sibling: int | None = None  # the next reader, once seen after SIGTERM (a reload)
        self._sibling_check = 0.0  # when to look for it next

    def sigterm(self, now: float) -> None:
        """keepalived's SIGTERM (only the earliest counts: the grace runs from it; cli's early handler's
        may be noted after a later one caught here).  The first time, see whether our handler ran late
        (we had no CPU, or were stuck in a system call, as it came) and keepalived's window opened
        earlier: keepalived unlinked our FIFO right after it (a reload of a FIFO it made), or started
        the next reader after it (see `_found`) -- a reload that parses a large configuration starts
        it up to seconds later, so the unlink, when there is one, is the closer bound."""
        first = self.term_at is None
        if self.term_at is None or now < self.term_at:
            self.term_at = now
        if first:
            unlinked = self.unlinked_at()
            if unlinked is not None and unlinked < now:
                self.term_at = unlinked
            self.sibling = self._found(self.next_reader())

    def _found(self, sibling: int | None) -> int | None:
        """The next reader, once found: keepalived sent our SIGTERM before it started it, so the window
        runs from then at the latest -- when we did not get the CPU (or were stuck in a system call)
        as it came, our handler ran late, and its clock would let keepalived's SIGKILL come first."""
        if sibling is not None and self.term_at is not None:
            age = identity.age(sibling)
            if age is not None:
                self.sigterm(time.monotonic() - age)
        return sibling

    def saw(self, events: list[Event], now: float) -> None:
        """A line came with these events (none: it was rejected): the FIFO is not quiet yet."""
        self.last_line_at = now
        for event in events:
            if event.type in ("INSTANCE", "GROUP"):
                self.states[event.key] = event.state

    def at_start(self, fifo_path: str) -> Verdict | None:
        """A SIGTERM came while we started (before we read a line): wait until SIBLING_WAIT after it,
        then a RELOAD if keepalived started the next reader (it may share our FIFO: we must not read
        it at all), None for a stop (read its STOP lines)."""
        assert self.term_at is not None
        time.sleep(max(0.0, self.term_at + SIBLING_WAIT - time.monotonic()))
        self.sibling = self._found(self.next_reader())
        if self.sibling is None:
            return None
        return Verdict("RELOAD", f"SIGTERM while starting, and keepalived started the next reader "
                                 f"(pid {self.sibling}): a reload; leaving {fifo_path} to it unread")

    def starter_exited(self) -> None:
        """The keepalived process that started us exited, with no SIGTERM to us (yet)."""
        if self.term_at is None:
            self.respawned = self.respawn(False)

    def done(self, now: float) -> bool:
        """After SIGTERM: the keepalived child that started us died (its restart: no STOP lines come);
        the grace is over; keepalived started the next reader (a reload, which writes no STOP lines
        and may hand it this very FIFO: reading beside it could journal lines out of order), looked
        for every SIBLING_CHECK even while lines come; or, once the FIFO is quiet, every known
        instance/group reported STOP (a stop)."""
        assert self.term_at is not None
        if not self._respawn_checked:
            self._respawn_checked = True  # at once: a stopping starter may exit while we read its STOP lines
            self.respawned = self.respawn(True)
        if not self._known_read:
            self._known_read = True
            self._know_earlier_names()
        if self.respawned is not None or now >= self.term_at + self.grace:
            return True
        self.look_for_next_reader(now)  # also while lines come: a busy shared FIFO must not keep us beside it
        if self.sibling is not None:
            return True
        # keepalived writes its STOP lines in one burst; a line of an instance or group we have not
        # seen yet may follow the last one we know by a moment: leave once the burst is over.
        if now < self.last_line_at + STOP_QUIET:
            return False
        return bool(self.states) and all(s in FINAL_STATES for s in self.states.values())

    def _know_earlier_names(self) -> None:
        """The instances and groups keepalived spoke of before us: it writes a STOP line for each, but
        after a reload (without fifo_write_vrrp_states_on_reload, its default) a reader hears only the
        transitions, so the names it saw alone would let it leave before their STOP lines when
        keepalived pauses between two of them for longer than STOP_QUIET (red team: a 60 ms pause, two
        STOP lines never read).  One that never reports STOP (removed from keepalived.conf) holds us
        to the grace, as one unknown did before.  (Not at a site whose progress file is large:
        progress.LAST_STATES_MAX.)"""
        try:
            earlier = self.known()
        except Exception:  # (a state directory we cannot read: the names we saw are what we have)
            return
        for key, state in earlier.items():
            if key.startswith(("INSTANCE ", "GROUP ")):
                self.states.setdefault(key, state)

    def look_for_next_reader(self, now: float, every: float = SIBLING_CHECK) -> None:
        """After SIGTERM, every `every` s: the next reader, if keepalived started one.  Also between
        the lines of one long read: the reader's window ends early once it knows it (reader.py)."""
        if self.term_at is not None and self.sibling is None and now >= self._sibling_check:
            self._sibling_check = now + every
            self.sibling = self._found(self.next_reader())

    def wake_in(self, now: float) -> float | None:
        """Seconds until `done` may change without a new line (None: not stopping)."""
        if self.term_at is None:
            return None
        quiet_at = self.last_line_at + STOP_QUIET
        return min(self.term_at + self.grace - now, quiet_at - now if quiet_at > now else self._sibling_check - now)

    def verdict(self, eof: bool, fifo_path: str, fifo_replaced: Callable[[float], bool]) -> Verdict:
        """Why the reader leaves: keepalived closed the FIFO with no SIGTERM (EOF), a reload (SIGTERM and
        EOF, a next reader, or a new FIFO made at our path since the SIGTERM: `fifo_replaced(term_at)`),
        or keepalived stopping (none of these)."""
        if self.respawned is not None:
            return Verdict("RELOAD", f"{'SIGTERM, and ' if self.term_at is not None else ''}{self.respawned}")
        if self.term_at is None:
            return Verdict("EOF", "keepalived closed the FIFO")
        if eof:
            return Verdict("RELOAD", "SIGTERM then EOF: keepalived is reloading")
        sibling = self.sibling or self.next_reader()
        if sibling is not None:
            return Verdict("RELOAD", f"SIGTERM, and keepalived started the next reader (pid {sibling}): "
                                     f"a reload; leaving the FIFO to it")
        if fifo_replaced(self.term_at):  # (made before our SIGTERM: someone's mkfifo, not keepalived's reload)
            return Verdict("RELOAD", f"SIGTERM, and {fifo_path} is a new FIFO: keepalived is reloading")
        return Verdict("STOP", "SIGTERM: keepalived is stopping")
