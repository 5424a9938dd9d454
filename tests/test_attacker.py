"""Root runs nothing user nobody can create, change or point at: every path kind the launcher
trusts x every way a local user can control a path, attacked for real.

Each case, as root, in an arena nobody can reach (support.attacker): the setup gives nobody one kind
of control over one path (`CONTROLS`), the launcher is pointed at it (`KINDS`), then nobody (a real
process, `setpriv`) uses that control -- writes its payload into the command, its own INI file or
settings.json, a symlink at the log -- and root does what it does with that path: the reader
starts and runs an event and keepalived's stop, root runs `send --state-dir`.  The payload touches
`ran-as-uid-$(id -u)`: `ran-as-uid-0` is nobody's code run by root.  Every case asserts that it never
exists, that nobody's write succeeded (the control is real), that the refusal names the path and
the offender, and that check-config says exactly what the reader says.  `test_checked_when_used`:
the control is given only after the reader started, and the worker refuses at the spawn.

The examples of the issue that found these holes are cases here (see `test_the_reported_attacks`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from notify_launcher.config import Settings
from notify_launcher.security import refusal
from support import LAUNCHER, attacker, processes
from support.attacker import NOBODY
from support.launcher import Launcher
from support.marks import needs
from support.waiting import wait_for

pytestmark = needs("root, setpriv, setfacl (Debian's acl package: scripts/setup installs it) and user nobody",
                   attacker.available())

EVENT = 'INSTANCE "VI_1" MASTER 100'
#: path kind -> the word the launcher names it by; which kinds are commands, directories, created by root
KINDS = {"config": "config file", "handler": "handler", "match": "[match INSTANCE VI_1 *] handler",
         "stop_action": "stop_action", "on_failure": "on_failure", "log": "log_file", "metrics": "metrics_file",
         "state_dir": "state_dir", "state_parent": "state_dir"}
COMMANDS = ("handler", "match", "stop_action", "on_failure")
DIRECTORIES = ("state_dir", "state_parent")
CONTROLS = ("owns_it", "owns_parent", "write_bit", "acl_file", "acl_parent", "acl_mask", "symlink",
            "missing_in_writable_dir", "missing_in_sticky_dir")
MISSING = ("missing_in_writable_dir", "missing_in_sticky_dir")


@dataclass
class Scene:
    """One arena: root's safe paths (`safe`), nobody's payloads, and the attacked path `target` in `parent`."""

    arena: Path
    kind: str
    control: str
    target: Path = Path()
    parent: Path = Path()
    offender: str = ""

    @property
    def safe(self) -> Path:
        return self.arena / "safe"

    @property
    def marker(self) -> Path:
        return self.arena / "marks" / "ran-as-uid-0"

    @property
    def victim(self) -> Path:
        return self.safe / "victim"

    @property
    def state(self) -> Path:
        """The state directory the launcher uses."""
        return {"state_dir": self.target, "state_parent": self.target / "state"}.get(self.kind, self.safe / "state")

    @property
    def log(self) -> Path:
        return self.target if self.kind == "log" else self.safe / "nl.log"

    @property
    def named(self) -> Path:
        """The path the refusal names."""
        return self.state if self.kind in DIRECTORIES else self.target

    def build(self) -> None:
        """Root's safe side, and the payloads nobody will put where the control lets it."""
        (self.arena / "marks").mkdir(mode=0o1777)
        (self.arena / "marks").chmod(0o1777)
        self.safe.mkdir(mode=0o755)
        self.victim.write_text("root's secret\n")
        self.victim.chmod(0o600)
        payload = f"touch {self.arena}/marks/ran-as-uid-$(id -u)"
        _write(self.arena / "payload.sh", f"#!/bin/sh\n{payload}\n", 0o755)
        _write(self.arena / "payload.ini", f"[launcher]\nhandler = /bin/sh -c '{payload}'\n", 0o644)
        settings = Settings(handler=("/bin/sh", "-c", payload), state_dir=str(self.state),
                            log_file=str(self.safe / "nl.log"))
        _write(self.arena / "payload.json", settings.to_json(), 0o644)

    def control_it(self, at_start: bool = True) -> None:
        """Make `target` (in `parent`) and give nobody this scene's control over it; `offender`: what
        the refusal must say.  at_start=False: only the safe target, for `grant` to spoil later."""
        parent = {"owns_parent": "nobody-dir", "missing_in_writable_dir": "nobody-dir", "acl_parent": "acl-dir",
                  "symlink": "sticky", "missing_in_sticky_dir": "sticky"}.get(self.control, "root-dir")
        self.parent = self.arena / parent
        self.parent.mkdir(mode=0o755)
        self.target = self.parent / "target"
        if parent == "sticky":
            self.parent.chmod(0o1777)
        elif parent == "nobody-dir" and at_start:
            os.chown(self.parent, NOBODY, NOBODY)
        if self.control not in MISSING + ("symlink",):
            if self.kind in DIRECTORIES:
                self.target.mkdir(mode=0o755)
            else:
                _write(self.target, "[launcher]\n" if self.kind == "config" else "#!/bin/sh\nexit 0\n",
                       0o755 if self.kind in COMMANDS else 0o644)
        if at_start:
            self.grant()
        self.offender = {
            "owns_it": f"{self.target} belongs to uid {NOBODY} (nobody), not root",
            "owns_parent": f"{self.parent} belongs to uid {NOBODY} (nobody), not root",
            "write_bit": f"{self.target} is writable by gid {NOBODY} (nogroup) (mode 0",
            "acl_file": f"{self.target} is writable by uid {NOBODY} (nobody) through an ACL entry",
            "acl_parent": f"{self.parent} is writable by uid {NOBODY} (nobody) through an ACL entry",
            "acl_mask": f"{self.target} is writable by gid {NOBODY} (nogroup) through an ACL entry",
            "symlink": f"{self.target} belongs to uid {NOBODY} (nobody), not root",
            "missing_in_writable_dir": f"does not exist; its directory {self.parent} belongs to uid {NOBODY} (nobody), "
                                       f"not root: refused (whoever can write there can create it)",
            "missing_in_sticky_dir": f"does not exist; its directory {self.parent} is writable by others (mode 1777): "
                                     f"refused (whoever can write there can create it)",
        }[self.control]

    def grant(self) -> None:
        """Give nobody the control: what an administrator's mistake (or nobody itself) does."""
        t = str(self.target)
        if self.control == "owns_it":
            os.chown(self.target, NOBODY, NOBODY)
        elif self.control == "owns_parent":
            os.chown(self.parent, NOBODY, NOBODY)
        elif self.control == "write_bit":
            os.chown(self.target, 0, NOBODY)
            self.target.chmod(self.target.stat().st_mode & 0o777 | 0o020)
        elif self.control == "acl_file":
            attacker.setfacl("-m", "u:nobody:rwx", t)
        elif self.control == "acl_parent":
            attacker.setfacl("-m", "u:nobody:rwx", str(self.parent))
        elif self.control == "acl_mask":
            attacker.setfacl("-m", "g:nogroup:rwx", t)  # the mask is recomputed to rwx: it lets the write through
        elif self.control == "symlink":  # nobody's own file (or directory) in the sticky directory, and a link
            mine = self.parent / "mine"
            made = "mkdir" if self.kind in DIRECTORIES else "printf '#!/bin/sh\\nexit 0\\n' >"
            res = attacker.nobody_sh(f"{made} {mine} && chmod 755 {mine} && ln -s {mine} {t}")
            assert res.returncode == 0, res.stderr

    def options(self) -> list[str]:
        """The launcher's options: root's safe defaults, the attacked path in its place."""
        t = str(self.target)
        ini = self.safe / "nl.ini"
        base = ["--state-dir", str(self.state), "--log-file", str(self.log), "--linger", "1"]
        base += [] if self.kind == "config" else ["--handler", "/bin/true"]  # (the INI's would lose to it)
        more = {"config": ["--config", t], "handler": ["--handler", t], "on_failure": ["--handler", "/bin/false",
                                                                                        "--on-failure", t],
                "match": ["--config", str(ini)], "stop_action": ["--config", str(ini)],
                "metrics": ["--metrics-file", t]}.get(self.kind, [])
        if self.kind in ("match", "stop_action"):
            _write(ini, f"[match INSTANCE VI_1 *]\nhandler = {t}\n" if self.kind == "match"
                   else f"[launcher]\nstop_action = {t}\n", 0o644)
        return base + more

    def exploit(self) -> subprocess.CompletedProcess[str]:
        """nobody uses its control: its payload where root will run or read it, or a link to root's file."""
        t, a = self.target, self.arena
        if self.kind in COMMANDS or self.kind == "config":
            src = a / ("payload.ini" if self.kind == "config" else "payload.sh")
            script = f"if [ -e {t} ] && [ -w {t} ]; then cat {src} > {t}; else rm -f {t}; cp {src} {t} && chmod 755 {t}; fi"
        elif self.kind in DIRECTORIES:
            s = self.state
            script = (f"if ! [ -d {t} ] || ! [ -w {t} ]; then mv {t} {t}.old 2>/dev/null; rm -f {t}; fi; "
                      f"if [ -e {s} ] && ! [ -w {s} ]; then mv {s} {s}.old; fi; "
                      f"mkdir -p {s} && rm -f {s}/settings.json && cp {a}/payload.json {s}/settings.json")
        else:
            script = f"if [ -e {t} ] && [ -w {t} ]; then echo forged >> {t}; else rm -f {t}; ln -s {self.victim} {t}; fi"
        return attacker.nobody_sh(script)


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)


def _launcher(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, *args], capture_output=True, text=True, timeout=120)


def _start_reader(scene: Scene, fifo: Path) -> tuple[subprocess.Popen[str] | None, int | None, str]:
    """Start the reader as keepalived does (FIFO last); (the running reader, None, "") once its standby
    worker is up, or (None, exit code, stderr) when it refused."""
    if not fifo.exists():
        os.mkfifo(fifo, 0o600)
    err = scene.arena / "reader.err"
    with open(err, "w") as fh:
        proc = subprocess.Popen([LAUNCHER, *scene.options(), str(fifo)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=fh, text=True)
    wait_for("the reader to refuse or start",
             lambda: proc.poll() is not None or (scene.state / "worker.pid").exists(), timeout=120)
    if proc.poll() is not None:
        return None, proc.returncode, err.read_text()
    return proc, None, ""


def _event_and_stop(scene: Scene, proc: subprocess.Popen[str], fifo: Path) -> None:
    """One event through the FIFO, then keepalived's stop (the STOP event runs stop_action); until idle.
    The FIFO stays open on our side, as keepalived keeps it: the reader sees SIGTERM, not EOF."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, EVENT.encode() + b"\n")
        _launcher("wait", "--state-dir", str(scene.state), "--timeout", "60")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        os.close(fd)
    _launcher("wait", "--state-dir", str(scene.state), "--timeout", "60")


def _security_lines(check: subprocess.CompletedProcess[str], ini: str) -> list[str]:
    """check-config's refusals, without its 'problem: WHERE: ' prefix."""
    lines = [line[len("problem: "):] for line in check.stdout.splitlines() if "is not safe for root" in line]
    return [line[len(ini) + 2:] if line.startswith(ini + ": ") else line for line in lines]


def _attack(kind: str, control: str, arena: Path) -> None:
    scene = Scene(arena, kind, control)
    scene.build()
    scene.control_it()
    fifo = scene.safe / "notify.fifo"
    options = scene.options()
    where = options[options.index("--config") + 1] if "--config" in options else "command line"
    check = _launcher("check-config", *options)
    proc, code, err = _start_reader(scene, fifo)
    exploit = scene.exploit()
    if proc is not None:  # it started: nobody's change is in place, root runs an event and the stop
        _event_and_stop(scene, proc, fifo)
    sent = None
    if kind in DIRECTORIES:  # root tests an action the documented way, on the state dir nobody prepared
        sent = _launcher("send", "--state-dir", str(scene.state), EVENT)
        if sent.returncode == 0:
            _launcher("wait", "--state-dir", str(scene.state), "--timeout", "60")
    assert not scene.marker.exists(), f"root ran nobody's code ({kind}, {control}); reader: {code} {err}"
    assert scene.victim.read_text() == "root's secret\n" and scene.victim.stat().st_mode & 0o777 == 0o600
    assert exploit.returncode == 0, f"nobody could not use the control (the case proves nothing): {exploit.stderr}"
    assert code == 2, f"the reader started ({kind} {scene.named}, {control})"
    refused = f"{KINDS[kind]} {scene.named} is not safe for root: "
    said = err.splitlines()[0] if err else ""  # (a refused log file adds a line of its own)
    assert said.startswith(f"notify-launcher: {refused}") and scene.offender in said, err
    assert check.returncode == 2 and "; ".join(_security_lines(check, where)) == said[len("notify-launcher: "):], \
        (check.stdout, said)
    if sent is not None:  # every operator command refuses it with the one message, as root runs them now
        expected = refusal("state_dir", str(scene.state), created=True)
        assert expected is not None
        for command in (["send", "--state-dir", str(scene.state), EVENT], ["status", "--state-dir", str(scene.state)],
                        ["history", "--state-dir", str(scene.state)], ["wait", "--state-dir", str(scene.state)]):
            res = sent if command[0] == "send" else _launcher(*command)
            assert (res.returncode, res.stderr) == (2, f"notify-launcher {command[0]}: {expected}\n")


@pytest.fixture
def arena() -> Iterator[Path]:
    with attacker.arena() as path:
        try:
            yield path
        finally:
            processes.end_all(str(path))


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_path_kind_and_control(kind: str, control: str, arena: Path) -> None:
    _attack(kind, control, arena)


@pytest.mark.parametrize("kind,control", [
    ("handler", "missing_in_writable_dir"),  # a --handler not there yet, in nobody's directory: created later
    ("match", "missing_in_writable_dir"),  # the same for a [match] handler
    ("handler", "acl_file"),  # root:root 0755 (0775 by the mask), an ACL entry lets nobody rewrite it
    ("handler", "acl_parent"),  # the same ACL on its directory: nobody swaps the file
    ("state_dir", "owns_it"),  # root runs `send --state-dir` on nobody's state dir and settings.json
])
def test_the_reported_attacks(kind: str, control: str, arena: Path) -> None:
    """The examples of the report, each shown running nobody's code as root before this rule."""
    _attack(kind, control, arena)


def test_a_stop_action_not_yet_in_tmp(arena: Path) -> None:
    """The report's stop_action in /tmp itself (sticky, world-writable): nobody creates it after the
    reader started, for keepalived's stop to run it."""
    scene = Scene(arena, "stop_action", "missing_in_sticky_dir")
    scene.build()
    scene.parent, scene.target = Path("/tmp"), Path(f"/tmp/{arena.name}-stop")
    fifo = scene.safe / "notify.fifo"
    try:
        check = _launcher("check-config", *scene.options())
        proc, code, err = _start_reader(scene, fifo)
        exploit = scene.exploit()
        if proc is not None:
            _event_and_stop(scene, proc, fifo)
    finally:
        scene.target.unlink(missing_ok=True)
    assert not scene.marker.exists(), "root ran nobody's stop_action"
    assert exploit.returncode == 0, exploit.stderr
    message = (f"stop_action {scene.target} is not safe for root: {scene.target} does not exist; its directory /tmp "
               f"is writable by others (mode 1777): refused (whoever can write there can create it); choose a "
               f"directory only root can write to")
    assert (code, err) == (2, f"notify-launcher: {message}\n")
    assert check.stdout == f"problem: {scene.safe / 'nl.ini'}: {message}\n"


def _controlled_after_start(scene: Scene) -> tuple[subprocess.Popen[str], Path, subprocess.CompletedProcess[str]]:
    """A safe setup whose reader starts; then nobody is given the control and uses it.  Returns
    the reader, its FIFO and the exploit's result."""
    scene.build()
    scene.control_it(at_start=False)
    fifo = scene.safe / "notify.fifo"
    proc, code, err = _start_reader(scene, fifo)
    assert proc is not None, f"the reader refused a safe setup: {code} {err}"
    scene.grant()
    return proc, fifo, scene.exploit()


@pytest.mark.parametrize("control", [c for c in CONTROLS if c not in MISSING + ("symlink",)])
@pytest.mark.parametrize("kind", COMMANDS)
def test_checked_when_used(kind: str, control: str, arena: Path) -> None:
    """The command was safe when the reader started; nobody gets the control afterwards and uses it.
    The worker checks the command right before the spawn: the event fails, the log says why, and
    check-config, run now, names the same reason."""
    scene = Scene(arena, kind, control)
    proc, fifo, exploit = _controlled_after_start(scene)
    _event_and_stop(scene, proc, fifo)
    assert not scene.marker.exists(), f"the worker ran nobody's {kind} as root"
    assert exploit.returncode == 0, exploit.stderr
    log = scene.log.read_text()
    failed = "on_failure FAILED" if kind == "on_failure" else "action ended"
    said = [line for line in log.splitlines() if f"{failed}: could not start: command {scene.target} is not safe "
                                                 f"for root: " in line]
    assert len(said) == 1 and " ERROR " in said[0] and scene.offender in said[0], log
    check = _launcher("check-config", *scene.options())
    why = re.sub(r" after [0-9.]+s( \(not retried\))?$", "", said[0].split(" is not safe for root: ", 1)[1])
    assert check.returncode == 2 and any(line.endswith(f"{scene.target} is not safe for root: {why}")
                                         for line in check.stdout.splitlines()), check.stdout


def test_the_worker_rereads_no_settings_nobody_could_write(arena: Path) -> None:
    """The state directory was root's when the reader started; an ACL given later lets nobody replace
    settings.json, which the lingering worker rereads before each batch.  It refuses the new file,
    says why, and runs the event with the settings it had."""
    scene = Scene(arena, "state_dir", "acl_file")
    proc, fifo, exploit = _controlled_after_start(scene)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, EVENT.encode() + b"\n")
        wait_for("event #1's action to end", lambda: "#1 INSTANCE \"VI_1\" MASTER 100 | action ended"
                 in scene.log.read_text(), timeout=60, diagnostics=scene.log.read_text)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        os.close(fd)
    assert not scene.marker.exists(), "the worker followed nobody's settings.json"
    assert exploit.returncode == 0, exploit.stderr
    log = scene.log.read_text()
    assert (f"ERROR #- - | cannot follow the settings (settings.json {scene.state}/settings.json is not safe for "
            f"root: {scene.offender}") in log, log
    assert "action started: /bin/true INSTANCE VI_1 MASTER 100 " in log


# What a command run as nobody (allowed: its file may be nobody's, README) sends into root's log.

FORGED = "2026-12-05 04:59:59.000 worker[1] ERROR #1 INSTANCE VI_1 MASTER | FORGED BY NOBODY"


def _nobodys_command(where: Path, script: str) -> Path:
    """`script` as nobody's own file in nobody's own directory below `where`."""
    home = where / "home"
    home.mkdir(mode=0o755)
    command = home / "h.sh"
    command.write_text(script)
    command.chmod(0o755)
    os.chown(home, NOBODY, NOBODY)
    os.chown(command, NOBODY, NOBODY)
    return command


def _run_as_nobody(launcher: Launcher, arena: Path, script: str, launcher_section: str = "",
                   events: int = 1) -> str:
    """One [match] command `script` run as nobody for VI_1 MASTER; the log once `events` actions ended."""
    command = _nobodys_command(arena, script)
    ini = launcher.dir / "nl.ini"
    ini.write_text(f"[launcher]\n{launcher_section}[match INSTANCE VI_1 *]\nhandler = {command}\nuser = nobody\n")
    launcher.extra_args += ["--config", str(ini)]
    k = launcher.keepalived()
    k.start()
    launcher.wait_started()
    k.write('INSTANCE "VI_1" MASTER 100')
    launcher.wait_for("event 1 ended", lambda: "action ended" in launcher.log_text(), timeout=60)
    return launcher.log_text()


@pytest.mark.parametrize("how", ["timeout", "background"])
def test_a_process_name_with_newlines_stays_inside_one_log_line(launcher: Launcher, arena: Path, how: str) -> None:
    """The worker names an action's other processes by their command lines (after a timeout: "sent
    SIGTERM to"; without one: "left running in the background"); a newline in a name nobody chose is
    escaped, so no log line starts with nobody's text."""
    launcher.unchecked = "asserted here"
    last = "exec sleep 30" if how == "timeout" else "sleep 0.5; exit 0"
    try:
        log = _run_as_nobody(launcher, arena, "#!/bin/bash\n(trap '' TERM; exec -a $'sleep\\n" + FORGED
                             + "\\n' sleep 5) &\n" + last + "\n", "timeout = 1\n")
    finally:
        launcher.end_processes()
    assert not [line for line in log.splitlines() if line.startswith(FORGED[:23])], log
    assert f"\\x0a{FORGED}\\x0a" in log, log


def test_an_actions_output_reaches_the_log_and_log_command_without_control_characters(
        launcher: Launcher, arena: Path) -> None:
    """Output with an OSC title sequence, a CSI erase and a CR is logged with those escaped, and
    `notify-launcher log` (run by root, on a terminal) shows it so."""
    launcher.unchecked = "asserted here"
    try:
        log = _run_as_nobody(launcher, arena, "#!/bin/sh\nprintf 'ok\\033]0;owned-by-nobody\\007\\033[2K\\rFORGED\\n'\n")
    finally:
        launcher.end_processes()
    assert "ok\\x1b]0;owned-by-nobody\\x07\\x1b[2K\\x0dFORGED" in log, log
    shown = subprocess.run([LAUNCHER, "log", "--log-file", str(launcher.log), "1"], capture_output=True, timeout=60)
    assert shown.returncode == 0 and b"\x1b" not in shown.stdout and b"\r" not in shown.stdout, shown.stdout


def test_on_failure_runs_when_the_failed_actions_output_holds_a_nul(launcher: Launcher, arena: Path) -> None:
    """A failed command's output with a NUL byte reaches on_failure's NL_OUTPUT as `\\x00`: root's
    alert runs, with the rest of the output."""
    launcher.unchecked = "asserted here"
    seen = arena / "seen"
    alert = launcher.dir / "alert.sh"
    alert.write_text(f"#!/bin/sh\nprintf '%s' \"$NL_OUTPUT\" > {seen}\n")
    alert.chmod(0o755)
    try:
        _run_as_nobody(launcher, arena, "#!/bin/sh\nprintf 'disk\\000full\\n'\nexit 1\n", f"on_failure = {alert}\n")
        launcher.wait_for("on_failure ended", lambda: "on_failure ended" in launcher.log_text()
                          or "on_failure fail" in launcher.log_text(), timeout=60)
    finally:
        launcher.end_processes()
    assert "on_failure ended: exit 0" in launcher.log_text(), launcher.log_text()
    assert seen.read_text() == "disk\\x00full"


def test_a_command_run_as_nobody_in_group_root_is_a_config_error(arena: Path) -> None:
    """`group = root` beside `user = nobody` would let nobody's command rewrite a root:root 0775
    command the trust rule passes (group root counts as root): the reader refuses the config with
    the file, section and key, and check-config says the same."""
    nob = _nobodys_command(arena, "#!/bin/sh\nexit 0\n")
    ini = arena / "nl.ini"
    ini.write_text(f"[launcher]\n[match INSTANCE VI_1 BACKUP]\nhandler = {nob}\nuser = nobody\ngroup = root\n")
    expected = (f"{ini}: [match INSTANCE VI_1 BACKUP] group: group 'root' is gid 0, which the trust rule counts "
                f"as root: a command run as 'nobody' in it could change root's group-writable files; choose "
                f"another group")
    fifo = arena / "notify.fifo"
    os.mkfifo(fifo, 0o600)
    reader = _launcher("--config", str(ini), "--state-dir", str(arena / "state"), "--log-file",
                       str(arena / "nl.log"), str(fifo))
    assert reader.returncode == 2 and expected in reader.stderr, reader.stderr
    checked = _launcher("check-config", "--config", str(ini))
    assert checked.returncode != 0 and expected in checked.stdout + checked.stderr, checked


# keepalived's FIFO: its lines decide what root runs; a line another process reads is lost.

FIFO_CONTROLS = {
    "nobody_made_it": "belongs to uid 65534 (nobody), not root",  # mkfifo -m 0666 first, in a sticky directory
    "others_write": "is writable by others (mode 0622)",
    "others_read": "is readable by others (mode 0644); chmod go-rw it",  # mkfifo under umask 022
    "acl_read": "is readable by uid 65534 (nobody) through an ACL entry",
}


def _fifo_with(arena: Path, control: str) -> Path:
    where = arena / "run"
    where.mkdir(mode=0o1777)
    where.chmod(0o1777)  # like /tmp
    fifo = where / "keepalived.fifo"
    if control == "nobody_made_it":
        assert attacker.nobody_sh(f"umask 0; mkfifo -m 0666 {fifo}").returncode == 0
    else:
        os.mkfifo(fifo, 0o600)
        fifo.chmod({"others_write": 0o622, "others_read": 0o644, "acl_read": 0o640}[control])
        if control == "acl_read":
            attacker.setfacl("-m", f"u:{NOBODY}:r", str(fifo))
    return fifo


@pytest.mark.parametrize("control", list(FIFO_CONTROLS))
def test_a_fifo_others_made_write_or_read_is_refused_by_the_reader_check_config_and_send(
        control: str, arena: Path) -> None:
    """The reader refuses to start on it (exit 2, before reading a line), check-config's
    --keepalived-conf names it for notify_fifo, and `send --fifo` writes nothing into it: one
    message, `notify_fifo PATH is not safe for root: ...`."""
    fifo = _fifo_with(arena, control)
    expected = f"notify_fifo {fifo} is not safe for root: {fifo} {FIFO_CONTROLS[control]}"
    reader = _launcher("--state-dir", str(arena / "state"), "--log-file", str(arena / "nl.log"),
                       "--handler", "/bin/true", str(fifo))
    assert reader.returncode == 2 and expected in reader.stderr, reader.stderr
    assert not (arena / "state" / "worker.pid").exists()
    conf = arena / "keepalived.conf"
    conf.write_text(f"global_defs {{\n    notify_fifo {fifo} root\n    notify_fifo_script /bin/true root\n}}\n")
    checked = _launcher("check-config", "--handler", "/bin/true", "--keepalived-conf", str(conf))
    assert checked.returncode == 2 and f"problem: {conf}:2: {expected}" in checked.stdout, checked.stdout
    sent = _launcher("send", "--fifo", str(fifo), EVENT)
    assert sent.returncode == 2 and sent.stderr.startswith(f"notify-launcher send: {expected}"), sent.stderr


def test_a_fifo_not_made_yet_in_a_directory_others_can_write_is_refused_by_check_config(arena: Path) -> None:
    """keepalived uses the FIFO it finds at its notify_fifo path: in a directory others can write
    (sticky or not), they can make it first; check-config says so before keepalived starts."""
    (arena / "run").mkdir(mode=0o1777)
    (arena / "run").chmod(0o1777)
    fifo = arena / "run" / "keepalived.fifo"
    conf = arena / "keepalived.conf"
    conf.write_text(f"global_defs {{\n    notify_fifo {fifo} root\n    notify_fifo_script /bin/true root\n}}\n")
    checked = _launcher("check-config", "--handler", "/bin/true", "--keepalived-conf", str(conf))
    assert checked.returncode == 2 and (
        f"problem: {conf}:2: notify_fifo {fifo} is not safe for root: {fifo} does not exist; its directory "
        f"{arena}/run is writable by others (mode 1777): refused (whoever can write there can create it)"
        in checked.stdout), checked.stdout


def test_an_actions_output_past_output_limit_is_counted_not_logged(launcher: Launcher, arena: Path) -> None:
    """`output_limit` bytes of a command's output (both streams) are logged, then one WARN line
    counts the rest; the pipes are still drained, so the command ends on its own."""
    launcher.unchecked = "asserted here"
    try:
        log = _run_as_nobody(launcher, arena, "#!/bin/sh\nfor n in 1 2 3 4 5; do echo line; done\n",
                             "output_limit = 12\n")
    finally:
        launcher.end_processes()
    assert log.count("| out: line") == 2, log
    assert "output truncated: 15 more bytes not logged (output_limit 12)" in log, log
    assert "action ended: exit 0" in log, log


def test_thirty_megabytes_of_output_make_no_thirty_megabytes_of_log(launcher: Launcher, arena: Path) -> None:
    """With the default output_limit (1 MiB), a command run as nobody that writes 30 MB within its
    timeout puts 1 MiB of it into root's log (under 5 MB with each line's stamp)."""
    launcher.unchecked = "asserted here"
    try:
        log = _run_as_nobody(launcher, arena, "#!/bin/sh\nyes 'nobody was here, on root s disk' | head -c 30000000\n")
    finally:
        launcher.end_processes()
    assert launcher.log.stat().st_size < 5_000_000, launcher.log.stat().st_size  # 1 MiB of short lines, stamped
    assert re.search(r"output truncated: \d{8} more bytes not logged \(output_limit 1048576\)", log), log[-2000:]


def test_no_other_user_can_carry_an_actions_containment_mark(launcher: Launcher, arena: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cgroups, an action's processes are found by their NOTIFY_LAUNCHER_ACTION mark: a
    random value per action, matched as one whole NAME=VALUE entry.  Processes of nobody's that
    carry what the mark once was (`action #1 STATE_DIR`), exactly or inside another variable, are
    not the action's: its timeout signals and names none of them."""
    monkeypatch.setenv("NOTIFY_LAUNCHER_NO_CGROUPS", "yes")
    launcher.unchecked = "asserted here"
    slow = launcher.dir / "slow.sh"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    launcher.handler = slow
    launcher.extra_args += ["--timeout", "1"]
    guessed = f"action #1 {launcher.state}"
    spoofers = [subprocess.Popen([*attacker.AS_NOBODY, "env", "-i", f"{name}={guessed}", "sleep", "300"],
                                 stdin=subprocess.DEVNULL) for name in ("NOTIFY_LAUNCHER_ACTION", "X1NOTIFY_LAUNCHER_ACTION")]
    k = launcher.keepalived()
    try:
        wait_for("nobody's processes to carry the guessed mark", lambda: all(
            f"={guessed}".encode() in Path(f"/proc/{p.pid}/environ").read_bytes() for p in spoofers), timeout=30)
        k.start()
        launcher.wait_started()
        k.write('INSTANCE "VI_1" MASTER 100')
        launcher.wait_for("event 1 ended", lambda: "action ended" in launcher.log_text(), timeout=60)
        log = launcher.log_text()
        assert "timed out" in log or "timeout of 1s reached" in log, log
        assert [p.poll() for p in spoofers] == [None, None], log
        assert not any(str(p.pid) in line for p in spoofers for line in log.splitlines() if "SIG" in line), log
    finally:
        for p in spoofers:
            p.kill()
            p.wait(10)
        k.stop([]) if k.proc else None
        launcher.end_processes()


def test_import_converts_no_directive_from_an_included_file_nobody_owns(arena: Path) -> None:
    """`import` follows keepalived.conf's includes; a notify directive in a file user nobody owns
    (or in a directory nobody can write) is not written into root's INI: it is listed as not
    converted, naming the file and why, and the exit code says so (EXIT_PARTIAL)."""
    drop = arena / "conf.d"
    drop.mkdir(mode=0o755)
    os.chown(drop, NOBODY, NOBODY)
    payload = f"/bin/sh -c 'touch {arena}/marks-pwned'"
    made = attacker.nobody_sh(f"cat > {drop}/vi.conf <<'X'\nvrrp_instance VI_1 {{\n    state BACKUP\n"
                              f"    interface lo\n    virtual_router_id 51\n    priority 100\n"
                              f"    notify_master \"{payload}\" root\n}}\nX\n")
    assert made.returncode == 0, made.stderr
    conf = arena / "keepalived.conf"
    conf.write_text(f"global_defs {{\n    script_user root\n}}\ninclude {drop}/*.conf\n")
    ini = arena / "nl.ini"
    done = _launcher("import", str(conf), "--write", str(ini))
    text = ini.read_text() if ini.exists() else ""
    assert "marks-pwned" not in text, text
    assert done.returncode == 4, done.stdout + done.stderr
    assert (f"{drop}/vi.conf:6  notify_master: {drop}/vi.conf: the launcher takes no command from a file someone "
            f"else could change: {drop} belongs to uid {NOBODY} (nobody), not root") in done.stdout, done.stdout
