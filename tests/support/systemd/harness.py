"""notify-launcher under a REAL systemd: Debian booted in a systemd-nspawn container.

    PYTHONPATH=tests .venv/bin/python -m support.systemd.harness stop-auto stop-daemon serve-restart
    PYTHONPATH=tests .venv/bin/python -m support.systemd.harness --cell trixie-deb cell
    PYTHONPATH=tests .venv/bin/python -m support.systemd.harness --matrix          # `cell` in every MATRIX cell
    PYTHONPATH=tests .venv/bin/python -m support.systemd.harness --source /tmp/old-checkout --keep stop-daemon

(as root, from the checkout; prints results).

PID 1 of these machines is not systemd, so the harness boots one.  A cell (cells.py) names the Debian
release (its keepalived, systemd, Python) and how the launcher is installed there (venv or .deb);
rootfs.py builds and caches what a container is made of (the release's root file system, wheels,
the .deb).  Per scenario run:

1. a run directory under /var/tmp holding what boot.sh installs: a copy of the project and the
   wheels of its dependencies (venv), or the .deb (deb);
2. cgroups we create, /sys/fs/cgroup/<hierarchy>/notify-launcher-test-..., one per hierarchy
   systemd uses (name=systemd and/or cgroup2): nspawn runs inside them (the host has no systemd to
   ask for a scope: --register=no --keep-unit), so we know every process it starts;
3. boot.sh, under `unshare --mount`: an overlay (lower = the cached root, never modified; upper =
   the run directory) so each scenario starts from a clean system; the install (chroot: pip offline
   into /opt/notify-launcher/venv, or `apt-get install ./…deb` against the release's archive); the
   scenario files (beside this one) and the handler (support.recorder's, written into the run
   directory); then systemd-nspawn --boot --private-network.  nl-scenario.service runs
   scenario.sh, which writes its results into /results (the run directory's results/) and powers
   the container off;
4. cleanup whatever happened: nspawn gets SIGTERM (an orderly poweroff) if the run overstays, then
   every process left in our cgroups is SIGKILLed by PID; the cgroups, nspawn's run-time directories
   it made on the host, and the run directory are removed.  The cache stays.

Environment:
  NL_SYSTEMD_CGROUP=hybrid  give the container the host's cgroup layout (v1 + name=systemd + v2);
                            default unified: cgroup v2 only, Debian 12's default, even on this host
  NL_SYSTEMD_KEEP=1         keep the run directory for a post-mortem (or --keep)
  NL_SYSTEMD_SOURCE=DIR     install another checkout than this one (or --source), e.g. an older
                            commit from `git archive COMMIT | tar -x -C DIR`
  NL_DEBIAN_MIRROR=URL      the Debian mirror (default: the one apt's sources use)
  NL_DEBIAN_SECURITY_MIRROR=URL   the security archive (default http://deb.debian.org/debian-security)
  NL_SYSTEMD_CACHE=DIR      the cache directory (default /var/cache/notify-launcher-test)

Scenarios (scenario.sh, beside this file):
  stop-auto      keepalived runs the launcher as notify_fifo_script with default settings;
                 `systemctl stop keepalived` while the MASTER action (10 s) runs
  stop-daemon    the same with `detach = daemon` (the double fork; a launcher without the `detach`
                 setting gets no such key: the double fork is all it has)
  serve-restart  `notify-launcher serve` as its own unit; `systemctl restart keepalived` mid-action
  cell           what a matrix cell proves, in one boot: the example configuration passes
                 `keepalived -t` and `check-config`; a MASTER action outlives `systemctl stop
                 keepalived` and the STOP action runs to its end; `systemctl reload keepalived`
                 mid-action, into a configuration with BURST more instances: numbering carries on
                 and their burst of events runs in order
  latency        event -> action start, the launcher (standby unit alive; linger = 1 and 2 s idle)
                 beside benchmarks/baseline-reader.sh as notify_fifo_script and the handler spawned
                 directly: benchmarks/systemd_states.py runs and reads it

Host packages: debootstrap (one that knows trixie and testing, and debian-archive-keyring with their
keys: bookworm's do), systemd-container (systemd-nspawn); util-linux (unshare), coreutils (chroot) are
always there.
Traffic: debootstrap, apt and pip reach the mirror/PyPI from the host (and the chroot, before the
boot) when the cache lacks something; VRRP runs only on a veth pair inside the container's private
network namespace.
"""

from __future__ import annotations

import argparse
import calendar
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import ROOT, recorder
from support.recorder import Action
from support.systemd import cells, rootfs
from support.systemd.cells import Cell
from support.systemd.rootfs import Log, Unavailable, quiet

HERE = Path(__file__).resolve().parent  # boot.sh, scenario.sh, the unit files and keepalived.conf files
HOST_PACKAGES = ("debootstrap", "debian-archive-keyring", "systemd-container")
SCENARIOS = ("stop-auto", "stop-daemon", "serve-restart", "cell", "latency")
BURST = 20  # instances the `cell` scenario's reload adds: 2 events each (BACKUP, MASTER) at once
RUN_TIMEOUT = 300.0  # seconds a scenario container may live (boot + scenario + poweroff): a guard, not a measure


def cgroup_mode() -> str:
    mode = os.environ.get("NL_SYSTEMD_CGROUP", "unified")
    if mode not in ("unified", "hybrid"):
        raise Unavailable(f"NL_SYSTEMD_CGROUP={mode!r}: expected unified or hybrid")
    return mode


def cgroup_hierarchies() -> list[Path]:
    """Where systemd (in the container) tracks processes: the cgroup2 mount and the v1 name=systemd
    hierarchy, whichever the host has.  nspawn must start inside a cgroup of each."""
    found: list[Path] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _source, options = (right.split() + ["", "", ""])[:3]
            mountpoint = Path(left.split()[4])
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options.split(",")):
                found.append(mountpoint)
    return found


def missing_prerequisites() -> str | None:
    """Why the harness cannot run here, or None.  Does not touch the network."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap, mounts, cgroups, systemd-nspawn)"
    missing = [b for b in ("debootstrap", "systemd-nspawn", "unshare", "chroot", "mount")
               if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")]
    if missing:
        return (f"missing {', '.join(missing)} (apt-get install {' '.join(HOST_PACKAGES)})")
    hierarchies = cgroup_hierarchies()
    if not hierarchies:
        return "no cgroup2 or name=systemd cgroup hierarchy is mounted"
    if not any(p.is_dir() and os.access(p, os.W_OK) for p in hierarchies):
        return f"cannot create cgroups under {', '.join(map(str, hierarchies))}"
    try:
        fs = Path("/proc/filesystems").read_text()
    except OSError:
        fs = ""
    if "overlay" not in fs and not Path("/sys/module/overlay").exists():
        subprocess.run(["modprobe", "overlay"], capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlay file system"
    try:
        cgroup_mode()
    except Unavailable as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# what the launcher under test supports (read from its --help, run on the host)


def default_source() -> Path:
    """The checkout installed into the container: NL_SYSTEMD_SOURCE, else this one."""
    return Path(os.environ.get("NL_SYSTEMD_SOURCE") or ROOT).resolve()


def launcher_help(source: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-m", "notify_launcher", *args, "--help"], env=env, cwd=source,
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def supports_detach(source: Path) -> bool:
    return "--detach" in launcher_help(source)


def supports_serve(source: Path) -> bool:
    text = launcher_help(source, "serve")
    return "usage: notify-launcher serve" in text and "--fifo" in text


# Where a checkout keeps the example INI (the .deb installs it as /etc/keepalived/notify-launcher.ini).
EXAMPLE_INIS = ("debian/notify-launcher.ini", "contrib/notify-launcher.ini")


def write_example(source: Path, dest: Path) -> None:
    """The checkout's example configuration, for the `cell` scenario: dest/keepalived.conf (from
    keepalived.conf.example) and dest/notify-launcher.ini (none when the checkout has none: the
    scenario then reports it missing)."""
    dest.mkdir()
    shutil.copy2(source / "keepalived.conf.example", dest / "keepalived.conf")
    for path in (source / p for p in EXAMPLE_INIS):
        if path.exists():
            shutil.copy2(path, dest / "notify-launcher.ini")
            break


def write_handler(path: Path) -> None:
    """The action of the scenarios (boot.sh installs it as /opt/nl-test/handler.sh): the recorder,
    recording into /results/records (the host's view of the run) with the cgroup each action runs in
    and the SIGTERM it may get; it sleeps as /etc/nl-test/sleeps (written by scenario.sh) says."""
    recorder.install(path, records=Path("/results/records"), sleeps=Path("/etc/nl-test/sleeps"), cgroup=True,
                     trap_term=True, then='echo "handler: $* done"')


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Result:
    scenario: str
    cell: Cell
    dir: Path
    exit_code: int | None
    seconds: float  # from Popen to the container's exit
    files: dict[str, str] = field(default_factory=dict)

    def text(self, name: str) -> str:
        return self.files.get(name, "")

    @property
    def done(self) -> bool:
        return self.text("done").strip() == "ok"

    @property
    def timeline(self) -> dict[str, float]:
        marks: dict[str, float] = {}
        for line in self.text("timeline").splitlines():
            name, _, value = line.partition(" ")
            marks.setdefault(name, float(value))
        return marks

    @property
    def facts(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.text("facts").splitlines() if "=" in line)

    @property
    def actions(self) -> list[Action]:
        """The handler's actions, from its own record (support.recorder, options cgroup and trap_term)."""
        return recorder.actions(recorder.parse(self.text("records")))

    def logged(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        """The launcher log's lines matching `pattern` (re.search), each with its time in epoch
        seconds (the log writes local time with milliseconds: the container's UTC offset is a fact)."""
        offset = self.facts.get("utc_offset", "+0000")
        shift = (1 if offset[0] == "+" else -1) * (int(offset[1:3]) * 3600 + int(offset[3:5]) * 60)
        found = []
        for line in self.text("launcher.log").splitlines():
            m = re.search(pattern, line)
            stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) ", line)
            if m and stamp:
                epoch = calendar.timegm(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) - shift
                found.append((epoch + int(stamp.group(2)) / 1000, m))
        return found

    def worker_lines(self) -> list[str]:
        return [line for line in self.text("launcher.log").splitlines() if "worker started" in line]

    def diagnostics(self) -> str:
        parts = [f"scenario {self.scenario} in {self.cell}: exit {self.exit_code} after {self.seconds:.1f} s, "
                 f"results {'complete' if self.done else 'INCOMPLETE'} (run dir {self.dir})"]
        for name, lines in (("scenario.log", 60), ("records", 40), ("facts", 40), ("launcher.log", 60),
                            ("ps-before-stop.txt", 40), ("ps-after-stop.txt", 40), ("units.txt", 60),
                            ("install.log", 30), ("console.log", 30)):
            text = self.text(name)
            if text:
                parts.append(f"--- {name} (last {lines} lines)\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    def report(self) -> str:
        """Timeline relative to the first of stop_begin / restart_begin (else keepalived_start)."""
        marks = self.timeline
        zero_name = next((k for k in ("stop_begin", "restart_begin", "keepalived_start") if k in marks), "")
        zero = marks.get(zero_name, 0.0)
        events: list[tuple[float, str]] = [(t, f"mark {k}") for k, t in marks.items()]
        for a in self.actions:
            events.append((a.start, f"action {a} started (cgroup {a.cgroup})"))
            if a.signal is not None:
                events.append((a.signal, f"action {a} got SIGTERM"))
            if a.end is not None:
                events.append((a.end, f"action {a} ended after {a.end - a.start:.2f} s"))
        lines = [f"{self.scenario} ({self.cell.name}): container ran {self.seconds:.1f} s; t=0 at {zero_name or '?'}"]
        lines += [f"  {t - zero:+8.3f} s  {what}" for t, what in sorted(events)]
        lines += [f"  {line.split(' | ', 1)[-1]}" for line in self.worker_lines()]
        return "\n".join(lines)


def read_results(scenario: str, cell: Cell, run_dir: Path, exit_code: int | None, seconds: float) -> Result:
    res = Result(scenario, cell, run_dir, exit_code, seconds)
    for path in sorted((run_dir / "results").rglob("*")):
        if path.is_file():
            res.files[str(path.relative_to(run_dir / "results"))] = path.read_text(errors="replace")
    console = run_dir / "console.log"
    if console.exists():
        res.files["console.log"] = console.read_text(errors="replace").replace("\r\n", "\n").replace("\r", "")
    return res


# ---------------------------------------------------------------------------------------------
# one boot


class Cgroups:
    """Our cgroup in each hierarchy systemd uses; everything nspawn starts stays below them."""

    def __init__(self, name: str) -> None:
        self.paths: list[Path] = []
        try:
            for hierarchy in cgroup_hierarchies():
                (hierarchy / name).mkdir()
                self.paths.append(hierarchy / name)
        except OSError:
            self.destroy()
            raise

    def joined(self, argv: list[str]) -> list[str]:
        """`argv` run by a shell that first moves itself in (exit 125, sh's error on stderr, if it
        cannot).  Not a preexec_fn: Python code between fork and exec in a process with threads can
        raise (an import lock another thread held at the fork), and subprocess then reports only
        "Exception occurred in preexec_fn"."""
        join = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["sh", "-c", join, "join-cgroups", *(str(p / "cgroup.procs") for p in self.paths), "--", *argv]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for p in self.paths:
            for procs in p.rglob("cgroup.procs"):
                try:
                    found |= {int(x) for x in procs.read_text().split()}
                except OSError:
                    pass
        return found

    def destroy(self, grace: float = 10.0) -> list[int]:
        """SIGKILL every process left (by PID), then remove the cgroups bottom-up.  Returns the pids killed."""
        killed: list[int] = []
        deadline = time.monotonic() + grace
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for p in self.paths:
            for sub in sorted((d for d in p.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
                sub.rmdir()
            if p.exists():
                p.rmdir()
        return killed


def ensure_cell(cell: Cell, source: Path, log: Log = quiet) -> Path:
    """Everything `cell` needs from the cache (built now if missing): its release's root file system
    (returned) and what its install way installs (wheels, or the .deb)."""
    root = rootfs.ensure_root(cell.release, log)
    if cell.install == "venv":
        rootfs.ensure_wheels(source, cell.release.python, log)
    else:
        rootfs.ensure_deb(source, log)
    return root


def run_scenario(scenario: str, source: Path | None = None, keep: bool | None = None, log: Log = quiet,
                 timeout: float = RUN_TIMEOUT, cell: Cell = cells.DEFAULT,
                 env: dict[str, str] | None = None) -> Result:
    """Boot a container of `cell` that runs `scenario` and powers off; return what it recorded.
    `env`: more variables for scenario.sh (e.g. the latency scenario's LAT_EVENTS)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    keep = os.environ.get("NL_SYSTEMD_KEEP") == "1" if keep is None else keep
    source = default_source() if source is None else source
    problem = missing_prerequisites()
    if problem:
        raise Unavailable(problem)
    base = ensure_cell(cell, source, log)
    detach = "daemon" if scenario == "stop-daemon" and supports_detach(source) else ""
    run_dir = Path(tempfile.mkdtemp(prefix=f"nl-systemd-{cell.name}-{scenario}-", dir="/var/tmp"))
    try:
        if cell.install == "venv":
            rootfs.copy_project(source, run_dir / "src")
            shutil.copytree(rootfs.ensure_wheels(source, cell.release.python), run_dir / "wheels",
                            ignore=shutil.ignore_patterns("ready"))
        else:
            deb = rootfs.ensure_deb(source)
            (run_dir / "deb").mkdir()
            shutil.copy2(deb, run_dir / "deb" / deb.name)
        write_handler(run_dir / "handler.sh")
        write_example(source, run_dir / "example")
        shutil.copy2(ROOT / "benchmarks" / "baseline-reader.sh", run_dir / "baseline-reader.sh")  # scenario latency
        # read by boot.sh, and by scenario.sh as /etc/nl-test/env
        (run_dir / "env").write_text(f"SCENARIO={scenario}\nDETACH={detach}\nINSTALL={cell.install}\n"
                                     f"NL={cell.launcher}\nBURST={BURST}\n"
                                     + "".join(f"{k}={v}\n" for k, v in (env or {}).items()))
        t0 = time.monotonic()
        exit_code = _boot(base, run_dir, f"nl-{cell.name}-{scenario}-{os.getpid()}", cell, log, timeout)
        return read_results(scenario, cell, run_dir, exit_code, time.monotonic() - t0)
    finally:
        if keep:
            log(f"kept {run_dir} (results/, console.log, upper/ = what the container changed)")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _boot(base: Path, run_dir: Path, machine: str, cell: Cell, log: Log, timeout: float) -> int | None:
    """Run boot.sh (and so the container) inside our cgroups; clean up whatever happens.  Returns
    nspawn's exit code (None: it had to be killed)."""
    nspawn_dirs = [Path("/run/systemd"), Path("/run/systemd/nspawn"), Path("/run/systemd/nspawn/locks"),
                   Path("/run/systemd/nspawn/propagate")]
    made_by_nspawn = [d for d in nspawn_dirs if not d.exists()]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"}
    if cgroup_mode() == "unified":
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", str(HERE / "boot.sh"),
            str(base), str(run_dir), machine, str(rootfs.apt_archives(cell.release))]
    cgroups = Cgroups(f"notify-launcher-test-{machine}")
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    try:
        log(f"booting {machine} ({cell}; {' '.join((run_dir / 'env').read_text().split())}; cgroup {cgroup_mode()})")
        with open(run_dir / "console.log", "wb") as console:
            proc = subprocess.Popen(cgroups.joined(argv), stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            exit_code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{machine} still running after {timeout:.0f} s: asking nspawn to power it off")
            proc.send_signal(signal.SIGTERM)  # nspawn: orderly shutdown of the container
            try:
                exit_code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"{machine} did not power off: SIGKILL to every process in its cgroups")
    finally:
        try:
            killed = cgroups.destroy()
            if killed:
                log(f"killed leftover pids {sorted(set(killed))}")
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()  # it is in our cgroups, so already dead unless it escaped them
                proc.wait()
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / machine, ignore_errors=True)
            for d in reversed(made_by_nspawn):
                try:
                    d.rmdir()
                except OSError:
                    pass
    return exit_code


# ---------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help=f"one of {', '.join(SCENARIOS)} (default: all but cell; with --matrix: cell)")
    p.add_argument("--cell", type=cells.parse, default=None,
                   help=f"RELEASE-INSTALL, e.g. trixie-deb (default {cells.DEFAULT.name})")
    p.add_argument("--matrix", action="store_true",
                   help=f"run the scenarios in every cell of the matrix ({', '.join(c.name for c in cells.MATRIX)})")
    p.add_argument("--source", type=Path, default=None,
                   help="the checkout to install (default: $NL_SYSTEMD_SOURCE, else this one)")
    p.add_argument("--keep", action="store_true", help="keep each run directory (results, overlay upper layer)")
    p.add_argument("--build-only", action="store_true", help="only build what the cells need in the cache")
    p.add_argument("--verbose", "-v", action="store_true", help="print the full diagnostics of every run")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    problem = missing_prerequisites()
    if problem:
        print(f"cannot run: {problem}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    source = args.source.resolve() if args.source else default_source()
    chosen = list(cells.MATRIX) if args.matrix else [args.cell or cells.DEFAULT]
    try:
        for cell in chosen:
            ensure_cell(cell, source, log)
            log(f"{cell.name}: cache ready after {time.monotonic() - t0:.1f} s")
    except Unavailable as exc:
        print(f"cannot run {cell.name}: {exc}", file=sys.stderr)
        return 2
    if args.build_only:
        return 0
    log(f"launcher at {source}: detach {'supported' if supports_detach(source) else 'NOT supported'}, "
        f"serve {'supported' if supports_serve(source) else 'NOT supported'}")
    scenarios = args.scenarios or (["cell"] if args.matrix else [s for s in SCENARIOS if s != "cell"])
    for cell in chosen:
        for scenario in scenarios:
            res = run_scenario(scenario, source, keep=args.keep, log=log, cell=cell)
            print(res.report())
            if args.verbose or not res.done:
                print(res.diagnostics())
    log(f"total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
