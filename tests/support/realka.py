"""Real keepalived nodes, each in its own network namespace, running notify-launcher as a user would.

    with Cluster(2) as c:                      # node1 priority 150, node2 priority 100
        c.nodes[0].sleep_on("INSTANCE", "STOP", 3)
        c.start()
        c.wait_settled()                       # node1 MASTER, node2 BACKUP, both launchers idle
        stop = c.nodes[0].term()               # SIGTERM to node1's keepalived; times the reader's exit

Each node gets a temp directory (its keepalived.conf, notify-launcher.ini, handler, FIFO, state
directory, launcher log, the handler's records and keepalived's console output) and a network
namespace.  Two nodes are joined by a veth pair; more nodes by veth pairs to a bridge in a hub
namespace.  Addresses exist only inside those namespaces (192.168.77.K/24, VIP 192.168.77.100), so
VRRP traffic never leaves them.  keepalived runs in the foreground (`-n`), so its PID is ours.

keepalived.conf points at the checkout exactly as keepalived.conf.example tells a user to:
`notify_fifo PATH root` + `notify_fifo_script "<repo>/bin/notify-launcher --config <ini>" root` with
`enable_script_security`.  `Cluster(script=...)` runs another notify_fifo_script instead (the
benchmarks' shell reader, benchmarks/failover.py): a function of the node that returns its argv.  (The user on notify_fifo matters: without it keepalived 2.2.7 looks the
default script user `keepalived_script` up again at every reload; with `enable_script_security` set
by the previous load and no such user (Debian creates none), the lookup fails and keepalived drops
the FIFO and its script until restarted: every later event is lost.)

Teardown (context manager, or the pytest fixture `real_cluster` of tests/conftest.py, a factory)
works whatever the test did: keepalived gets SIGTERM, then SIGKILL by PID; every process whose
command line names the cluster's directory (readers, workers, handlers) and their descendants get
SIGKILL by PID (support.processes); the namespaces and the temp directory go.  Set
NL_KEEP_REALKA=1 to keep the directory for a post-mortem.

The handler is the recorder (support.recorder): each action appends its start and end lines to
the node's `records`, after an optional sleep chosen per TYPE and STATE (`Node.sleep_on`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil

from notify_launcher.journal import Entry
from support import LAUNCHER, inorder, processes, recorder, waiting
from support.launcher import forget_fifos
from support.recorder import Action

SUBNET = "192.168.77"
VIP = f"{SUBNET}.100"
IFACE = "vrrp0"
NS_PREFIX = "nlka"
KILL_AFTER = 1.0  # keepalived SIGKILLs its notify_fifo_script's group this long after SIGTERM

KEEPALIVED_CONF = """\
# keepalived.conf of {name}, written by tests/support/realka.py
# 2.2.7's main process sometimes misses its child's exit and then waits 5 s; only at top level.
child_wait_time 2

global_defs {{
    router_id {name}
    # The user is named on notify_fifo too: see tests/support/realka.py (a reload would drop the FIFO).
{fifo_lines}    enable_script_security
    fifo_write_vrrp_states_on_reload
    vrrp_version 3
    vrrp_down_timer_adverts 1
}}

# As in keepalived.conf.example.  Its GROUP lines accompany the instance's; and at a reload with
# fifo_write_vrrp_states_on_reload, 2.2.7 re-sends the group's state but not a MASTER instance's.
vrrp_sync_group G1 {{
    group {{
        VI_1
    }}
}}

vrrp_instance VI_1 {{
    state BACKUP
    interface {iface}
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        {vip}/24
    }}
}}
"""

FIFO_LINES = {
    "global": 'notify_fifo {fifo} root\n    notify_fifo_script "{script}" root\n',
    # The README's form for LVS sites: one FIFO for both keepalived processes, the script the VRRP one's.
    "vrrp+lvs": ('vrrp_notify_fifo {fifo} root\n    vrrp_notify_fifo_script "{script}" root\n'
                 '    lvs_notify_fifo {fifo} root\n'),
}

LAUNCHER_INI = """\
# notify-launcher.ini of {name}, written by tests/support/realka.py
[launcher]
handler = {handler}
state_dir = {state}
log_file = {log}
linger = {linger:g}
timeout = {timeout:g}
"""


# ---------------------------------------------------------------------------------------------
# prerequisites


def keepalived_binary() -> str | None:
    return shutil.which("keepalived") or shutil.which("keepalived", path="/usr/sbin:/sbin")


def ip_binary() -> str | None:
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def missing_prerequisite() -> str | None:
    """Why real keepalived nodes cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "real keepalived tests need root (network namespaces, keepalived)"
    if keepalived_binary() is None:
        return "keepalived is not installed (apt-get install keepalived; scripts/setup does it as root)"
    if ip_binary() is None:
        return "iproute2's `ip` is not installed (apt-get install iproute2)"
    probe = f"{NS_PREFIX}{os.getpid()}probe"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"cannot create a network namespace: {res.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    problem = insecure_path(str(LAUNCHER))
    if problem:
        return f"keepalived's enable_script_security would refuse {LAUNCHER}: {problem}"
    return None


def insecure_path(path: str) -> str | None:
    """keepalived's enable_script_security rule for a root-run script (lib/notify.c check_security):
    every component owned by root; files, and directories without the sticky bit, not writable by
    a non-root group or by others.  keepalived checks the path with symlinks resolved."""
    parts = Path(os.path.realpath(path)).parts
    for i in range(1, len(parts) + 1):
        p = os.path.join(*parts[:i])
        try:
            st = os.lstat(p)
        except OSError as exc:
            return f"{p}: {exc.strerror}"
        if st.st_uid != 0:
            return f"{p} is owned by uid {st.st_uid}, not root"
        sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX
        if not sticky_dir and ((st.st_gid and st.st_mode & stat.S_IWGRP) or st.st_mode & stat.S_IWOTH):
            return f"{p} is writable by non-root (mode {stat.filemode(st.st_mode)})"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([ip_binary() or "ip", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs that died before their teardown (their creator's pid is gone)."""
    res = _ip("netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)[a-z].*", name)
        if m and not psutil.pid_exists(int(m.group(1))):
            _ip("netns", "del", name, check=False)


# ---------------------------------------------------------------------------------------------
# one node


@dataclass
class StopTiming:
    """What happened when a node's keepalived got SIGTERM (times in seconds after the signal)."""

    term_at: float                   # wall clock (time.time()) of the SIGTERM
    reader_pid: int
    reader_gone_after: float | None  # the reader process exited (None: still there after the wait)
    keepalived_exit_after: float | None
    keepalived_returncode: int | None


Script = Callable[["Node"], list[str]]  # a node's notify_fifo_script argv (keepalived appends the FIFO)


@dataclass
class Node:
    index: int  # 1-based
    priority: int
    ns: str
    dir: Path
    script: Script | None = None  # None: the launcher, as keepalived.conf.example runs it
    # With a checker: keepalived runs `--all` (its checker child too; virtual_server blocks would need
    # IPVS), FIFO_LINES[fifo_form] name the FIFO, made before keepalived starts (as the README tells
    # LVS sites).  Without: `-P` (VRRP only) and the global notify_fifo.
    checker: bool = False
    fifo_form: str = "global"
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _stop_kids: list[psutil.Process] | None = field(default=None, repr=False)

    # -- paths ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def conf(self) -> Path:
        return self.dir / "keepalived.conf"

    @property
    def ini(self) -> Path:
        return self.dir / "notify-launcher.ini"

    @property
    def handler(self) -> Path:
        return self.dir / "handler.sh"

    @property
    def fifo(self) -> Path:
        return self.dir / "notify.fifo"

    @property
    def state(self) -> Path:
        return self.dir / "state"

    @property
    def log(self) -> Path:
        return self.dir / "launcher.log"

    @property
    def rec(self) -> Path:
        return self.dir / "records"

    @property
    def ka_log(self) -> Path:
        return self.dir / "keepalived.out"

    def write_files(self, linger: float, timeout: float) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        recorder.install(self.handler, records=self.rec, sleeps=self.dir / recorder.SLEEPS)
        self.ini.write_text(LAUNCHER_INI.format(name=self.name, handler=self.handler, state=self.state,
                                                log=self.log, linger=linger, timeout=timeout))
        fifo_lines = "    " + FIFO_LINES[self.fifo_form].format(fifo=self.fifo, script=" ".join(self.script_argv()))
        self.conf.write_text(KEEPALIVED_CONF.format(name=self.name, fifo_lines=fifo_lines, iface=IFACE,
                                                    priority=self.priority, vip=VIP))
        if self.checker and not self.fifo.exists():
            os.mkfifo(self.fifo, 0o600)

    def script_argv(self) -> list[str]:
        """The notify_fifo_script's command line, before the FIFO keepalived appends."""
        return [LAUNCHER, "--config", str(self.ini)] if self.script is None else self.script(self)

    def sleep_on(self, type_: str, state: str, seconds: float, until: Path | None = None) -> None:
        """Make the recorder's action for TYPE STATE take `seconds`, and then, if `until` is given,
        wait until that file exists (the test opens the gate when what it waits for happened:
        state, not a guess at how long it takes).  Adds to earlier choices."""
        with open(self.dir / recorder.SLEEPS, "a") as fh:
            fh.write(recorder.sleep_line(type_, state, seconds, until))

    # -- keepalived ----------------------------------------------------------------------------
    def keepalived_argv(self) -> list[str]:
        """Every pid file in the node's directory, BFD's too: keepalived refuses to start ("daemon is
        already running") when any default one, such as /run/bfd.pid, names a live process -- another
        keepalived on this machine started without -b."""
        d = self.dir
        return [ip_binary() or "ip", "netns", "exec", self.ns, keepalived_binary() or "keepalived",
                "-n", "-l", "-D", "-G", "--all" if self.checker else "-P", "-f", str(self.conf),
                "-p", str(d / "keepalived.pid"), "-r", str(d / "vrrp.pid"), "-c", str(d / "checkers.pid"),
                "-b", str(d / "bfd.pid")]

    def start(self) -> None:
        """Start keepalived in the node's namespace (`ip netns exec` execs it: the PID is keepalived's)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name}: keepalived already runs"
        out = open(self.ka_log, "ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(self.keepalived_argv(), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def hup(self) -> float:
        """keepalived's reload; returns the wall-clock time of the signal."""
        return self.send_signal(signal.SIGHUP)

    def send_signal(self, sig: signal.Signals) -> float:
        """`sig` to keepalived, nothing else (no watching, unlike `term`: the benchmarks keep the
        CPUs to what they measure); returns the wall-clock time of the signal."""
        assert self.proc is not None
        t = time.time()
        self.proc.send_signal(sig)
        return t

    def term(self, wait: float = 10.0) -> StopTiming:
        """SIGTERM to keepalived (as `systemctl stop` does); watch the current reader and keepalived exit.

        The reader's exit is timed from outside by polling its PID every millisecond: a reader that
        keepalived had to SIGKILL could only vanish at or after +1 s."""
        assert self.proc is not None
        reader = self.current_reader()
        t0m, t0 = time.monotonic(), time.time()
        self.proc.send_signal(signal.SIGTERM)
        gone: float | None = None
        exited: float | None = None
        while time.monotonic() - t0m < wait and (gone is None or exited is None):
            if gone is None and not processes.running(reader):
                gone = time.monotonic() - t0m
            if exited is None and self.proc.poll() is not None:
                exited = time.monotonic() - t0m
            time.sleep(0.001)
        return StopTiming(t0, reader.pid, gone, exited, self.proc.returncode)

    def current_reader(self) -> psutil.Process:
        """The live notify_fifo_script: a descendant of keepalived (the VRRP child's child; with
        `--all` and the global FIFO, the checker's, under `sh -c`) running the launcher with our FIFO
        as its last argument, as keepalived appends it, in keepalived's session (a worker, forked
        from a reader, has its own once detached) and not a fork of a reader.  The newest, in a
        reload."""
        assert self.proc is not None
        session = os.getsid(self.proc.pid)
        readers = []
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:  # an old reader may be a zombie now: its cmdline raises
                cmd = p.cmdline()
                if (cmd[-1:] == [str(self.fifo)] and "notify_launcher" in cmd and os.getsid(p.pid) == session
                        and processes.running(p) and p.parent().cmdline() != cmd):  # not a worker being forked
                    readers.append(p)
            except (psutil.Error, OSError):
                continue
        if not readers:
            raise AssertionError(f"{self.name}: no live reader under keepalived pid {self.proc.pid}\n"
                                 f"{self.diagnostics()}")
        return max(readers, key=lambda p: p.create_time())

    def child_pid(self, which: str) -> int:
        """keepalived's "vrrp" or "checker" child, from its pid file.  Raises ValueError while the file
        is empty: keepalived truncates, then writes it, when it starts the child again."""
        words = (self.dir / ("vrrp.pid" if which == "vrrp" else "checkers.pid")).read_text().split()
        if not words:
            raise ValueError(f"{self.name}: {which} pid file is empty (keepalived is writing it)")
        return int(words[0])

    def stop_keepalived(self, grace: float = 4.0) -> None:
        """Teardown: SIGTERM (unless `begin_stop` sent it), then SIGKILL to keepalived and its
        children by PID if it is still there after `grace`."""
        kids = self.begin_stop()
        if self.proc is None:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            processes.kill(kids)
            self.proc.kill()
            self.proc.wait(5)

    def begin_stop(self) -> list[psutil.Process]:
        """SIGTERM to a live keepalived (once); returns its processes, for a SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        if self._stop_kids is None:
            try:
                self._stop_kids = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                self._stop_kids = []
            self.proc.send_signal(signal.SIGTERM)
        return self._stop_kids

    # -- what happened ----------------------------------------------------------------------------
    def actions(self) -> list[Action]:
        """The recorder's actions in start order."""
        return recorder.actions(recorder.read(self.rec))

    def order_problems(self) -> list[str]:
        """What breaks "every journaled keepalived event ran exactly once, in order" (support.inorder)."""
        return inorder.problems(self.journal(), self.actions(), self.log_text())

    def instance_states(self) -> list[str]:
        return [a.state for a in self.actions() if a.type == "INSTANCE"]

    def keepalived_states(self) -> list[str]:
        """VI_1's transitions as keepalived's own console log tells them (a FAULT is logged twice)."""
        states: list[str] = []
        for m in re.finditer(r"\(VI_1\):? [Ee]ntering (MASTER|BACKUP|FAULT) (?:STATE|state)", self.ka_text()):
            if not states or states[-1] != m.group(1):
                states.append(m.group(1))
        return states

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ka_text(self) -> str:
        return self.ka_log.read_text(errors="replace") if self.ka_log.exists() else ""

    def journal(self) -> list[Entry]:
        """The journal's entries (inorder.journal_entries)."""
        path = self.state / "journal"
        return inorder.journal_entries(path.read_text()) if path.exists() else []

    def reader_pids(self) -> list[int]:
        """Readers in start order, from their 'reader started' log lines."""
        return [int(m) for m in re.findall(r"reader\[(\d+)\] INFO  #- - \| reader started", self.log_text())]

    def link_up(self) -> bool:
        flags = _ip("-n", self.ns, "-o", "link", "show", "dev", IFACE).stdout
        return "LOWER_UP" in flags and "state UP" in flags

    def has_vip(self) -> bool:
        return f"inet {VIP}/" in _ip("-n", self.ns, "-4", "addr", "show", "dev", IFACE).stdout

    def fifo_inode(self) -> int | None:
        try:
            return os.stat(self.fifo).st_ino
        except FileNotFoundError:
            return None

    def processes(self) -> list[psutil.Process]:
        """Every launcher process of this node (readers and workers: their command line names our
        directory; handlers too), plus their descendants (a handler's sleep)."""
        return processes.family(processes.find(str(self.dir)))

    def wait_idle(self, timeout: float = 60) -> None:
        """The launcher is idle (`notify-launcher wait`).  Another script has no such state: there,
        every action that started has ended (an event not yet started is not seen)."""
        if self.script is not None:
            self.wait_for("every action to end", lambda: all(a.end is not None for a in self.actions()), timeout)
            return
        res = subprocess.run([LAUNCHER, "wait", "--state-dir", str(self.state), "--timeout", str(timeout)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"{self.name}: launcher not idle after {timeout}s\n{self.diagnostics()}"

    def wait_for(self, what: str, cond: Callable[[], object], timeout: float = 60) -> None:
        """`waiting.wait_for`, failing with this node's records and log tails."""
        waiting.wait_for(f"{self.name}: {what}", cond, timeout, diagnostics=self.diagnostics, poll=0.02)

    def diagnostics(self) -> str:
        recs = self.rec.read_text() if self.rec.exists() else "(none)\n"
        return (f"--- {self.name} records:\n{recs}--- {self.name} launcher log (tail):\n{self.log_text()[-4000:]}"
                f"--- {self.name} keepalived output (tail):\n{self.ka_text()[-3000:]}")


def exit_time(proc: psutil.Process, since: float, wait: float = 5.0) -> float | None:
    """Seconds from `since` (time.monotonic()) until `proc` exited, polled every millisecond;
    None if it still runs after `wait`."""
    while processes.running(proc):
        if time.monotonic() - since > wait:
            return None
        time.sleep(0.001)
    return time.monotonic() - since


def _last_states_are(node: Node, state: str) -> bool:
    """The last INSTANCE action and the last GROUP action both ran for `state`."""
    actions = node.actions()
    return all([a.state for a in actions if a.type == type_][-1:] == [state] for type_ in ("INSTANCE", "GROUP"))


# ---------------------------------------------------------------------------------------------
# the cluster

_counter = 0


class Cluster:
    """N keepalived nodes in namespaces; node K has address .K and priority 150, 100, 50, ..."""

    def __init__(self, count: int = 2, priorities: list[int] | None = None, linger: float = 600,
                 timeout: float = 60, keep: bool | None = None, script: Script | None = None,
                 checker: bool = False, fifo_form: str = "global") -> None:
        global _counter
        _counter += 1
        if not 2 <= count <= 9:
            raise ValueError("2 to 9 nodes")
        self.priorities = priorities or [150 - 50 * i if i < 3 else 10 + i for i in range(count)]
        self.linger, self.timeout = linger, timeout
        self.keep = os.environ.get("NL_KEEP_REALKA") == "1" if keep is None else keep
        tag = f"{NS_PREFIX}{os.getpid()}c{_counter}"
        self.hub = f"{tag}hub" if count > 2 else None
        self.dir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
        self.nodes = [Node(i + 1, self.priorities[i], f"{tag}n{i + 1}", self.dir / f"node{i + 1}", script,
                           checker=checker, fifo_form=fifo_form) for i in range(count)]
        self._namespaces: list[str] = []

    def __enter__(self) -> Cluster:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        """Namespaces, links, addresses, per-node files; keepalived is not started yet."""
        remove_stale_namespaces()
        for ns in [n.ns for n in self.nodes] + ([self.hub] if self.hub else []):
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        if self.hub is None:
            a, b = self.nodes
            _ip("link", "add", IFACE, "netns", a.ns, "type", "veth", "peer", "name", IFACE, "netns", b.ns)
        else:
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for n in self.nodes:
                port = f"p{n.index}"
                _ip("link", "add", IFACE, "netns", n.ns, "type", "veth", "peer", "name", port, "netns", self.hub)
                _ip("-n", self.hub, "link", "set", port, "master", "br0")
                _ip("-n", self.hub, "link", "set", port, "up")
        for n in self.nodes:
            _ip("-n", n.ns, "addr", "add", f"{n.address}/24", "dev", IFACE)
            _ip("-n", n.ns, "link", "set", IFACE, "up")
            n.write_files(self.linger, self.timeout)
        # Start keepalived only once every link has carrier: a veth without it puts the node in
        # FAULT at start-up, for as long as the kernel takes to report the link (about 1 s).
        for n in self.nodes:
            n.wait_for(f"carrier on {IFACE}", n.link_up, timeout=10)

    def start(self, nodes: list[Node] | None = None) -> None:
        for n in nodes or self.nodes:
            script = n.script_argv()[0]
            problem = insecure_path(script)
            if problem:
                raise RuntimeError(f"keepalived (enable_script_security) would refuse {script}: {problem}")
            n.start()

    def wait_settled(self, timeout: float = 60) -> None:
        """node1 MASTER (its VIP up), the others BACKUP, as their actions say -- the instance's and
        its sync group's (keepalived writes the two lines one after the other: waiting for one
        action only could leave the other's event still in the FIFO); launchers idle."""
        first, *rest = self.nodes
        first.wait_for("node1's MASTER actions and VIP",
                       lambda: _last_states_are(first, "MASTER") and first.has_vip(), timeout)
        for n in rest:
            n.wait_for(f"{n.name}'s BACKUP actions", partial(_last_states_are, n, "BACKUP"), timeout)
        for n in self.nodes:
            n.wait_idle(timeout)

    def diagnostics(self) -> str:
        return "\n".join(n.diagnostics() for n in self.nodes)

    def close(self) -> None:
        """Everything goes, by PID, whatever state the test left: keepalived, launchers, namespaces, files."""
        errors: list[str] = []
        for n in self.nodes:
            n.begin_stop()  # all at once: each takes about 1 s
        for n in self.nodes:
            try:
                n.stop_keepalived()
            except Exception as exc:  # keep tearing down
                errors.append(f"{n.name}: {exc}")
        processes.end_all(str(self.dir))  # readers, workers, handlers: their command lines name it
        forget_fifos(self.dir)
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
        self._namespaces.clear()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise RuntimeError("teardown: " + "; ".join(errors))
