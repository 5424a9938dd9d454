"""Running as root, the launcher refuses config files and actions others can change (keepalived's rule)."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from pathlib import Path

import pytest

from support import attacker
from support.launcher import Launcher
from support.marks import needs
from notify_launcher.config import COMMAND_PATH
from notify_launcher.log import Log
from notify_launcher.statedir import open_mode
from notify_launcher.security import insecure_reason, parse_acl
from notify_launcher.errors import LauncherError
from notify_launcher.statedir import ensure_state_dir

NOBODY = 65534  # the user (and group) that plays the local attacker
OWNER_REMEDY = "chown it to root, or choose a path only root can change"
MODE_REMEDY = "chmod go-w it, or choose a path only root can change"

pytestmark = needs("root (ownership and root-only rules)", os.geteuid() == 0)


def test_safe_paths_pass(tmp_path: Path) -> None:
    safe = tmp_path / "act.sh"
    safe.write_text("#!/bin/sh\n")
    safe.chmod(0o755)
    assert insecure_reason(str(safe)) is None
    assert insecure_reason("/bin/sh") is None


def test_world_writable_file_group_writable_dir_foreign_owner_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "act.sh"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o777)
    assert insecure_reason(str(f)) == f"{f} is writable by others (mode 0777); {MODE_REMEDY}"
    f.chmod(0o755)
    d = tmp_path / "dir"
    d.mkdir()
    d.chmod(0o775)
    (d / "x").write_text("")
    assert insecure_reason(str(d / "x")) is None  # group root is root, as in keepalived
    os.chown(d, 0, NOBODY)
    assert insecure_reason(str(d / "x")) == f"{d} is writable by gid {NOBODY} (nogroup) (mode 0775); {MODE_REMEDY}"
    d.chmod(0o755)
    os.chown(d / "x", NOBODY, NOBODY)
    assert insecure_reason(str(d / "x")) == f"{d / 'x'} belongs to uid {NOBODY} (nobody), not root; {OWNER_REMEDY}"


def test_sticky_directory_on_the_way_is_fine_but_a_symlink_target_is_checked(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    f = sticky / "act.sh"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o755)
    assert insecure_reason(str(f)) is None
    bad = tmp_path / "bad.sh"
    bad.write_text("")
    bad.chmod(0o666)
    link = tmp_path / "link.sh"
    link.symlink_to(bad)
    assert insecure_reason(str(link)) == f"{bad} is writable by others (mode 0666); {MODE_REMEDY}"


def test_reader_refuses_to_start_with_an_insecure_handler_or_config(launcher: Launcher) -> None:
    launcher.handler.chmod(0o777)
    os.mkfifo(launcher.fifo, 0o600)
    res = subprocess.run(launcher.argv(str(launcher.fifo)), capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert f"handler {launcher.handler} is not safe for root: {launcher.handler} is writable by others (mode 0777)" in res.stderr
    launcher.handler.chmod(0o755)
    ini = launcher.dir / "x.ini"
    ini.write_text("[launcher]\n")
    ini.chmod(0o646)
    res = subprocess.run(launcher.argv("--config", str(ini), str(launcher.fifo)), capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    assert f"config file {ini} is not safe for root: {ini} is writable by others (mode 0646)" in res.stderr
    assert "is not safe" in launcher.log_text()


def _reader(launcher: Launcher, *args: str) -> subprocess.CompletedProcess[str]:
    """Start the reader (FIFO last, as keepalived does); it must refuse, not start reading."""
    if not launcher.fifo.exists():
        os.mkfifo(launcher.fifo, 0o600)
    try:
        return subprocess.run(launcher.argv(*args, str(launcher.fifo)), capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the reader started (with {args}) instead of refusing:\n{launcher.log_text()[-2000:]}")


def test_state_dir_symlink_or_foreign_owner_is_refused(launcher: Launcher) -> None:
    launcher.unchecked = "the launcher refuses these state directories: nothing runs"
    real = launcher.dir / "real-state"
    real.mkdir()
    launcher.state.symlink_to(real)
    res = _reader(launcher)
    assert res.returncode == 2, res.stderr
    assert f"state_dir {launcher.state} is not safe for root: {launcher.state} is a symlink; root creates" in res.stderr
    launcher.state.unlink()
    launcher.state.mkdir()
    os.chown(launcher.state, 1234, 1234)
    res = _reader(launcher)
    assert res.returncode == 2 and f"state_dir {launcher.state} is not safe for root: {launcher.state} belongs " \
                                   f"to uid 1234, not root" in res.stderr
    with pytest.raises(LauncherError, match=f"state directory {launcher.state} belongs to uid 1234, not to us"):
        ensure_state_dir(str(launcher.state))
    with pytest.raises(LauncherError, match=f"state directory {real.parent / 'link'} is a symlink; refusing it"):
        (real.parent / "link").symlink_to(real)
        ensure_state_dir(str(real.parent / "link"))


def test_state_dir_below_a_directory_another_user_owns_is_refused(launcher: Launcher) -> None:
    """Hole: that user renames the state dir away and puts their own in its place, whose settings.json
    makes the next worker run their script as root."""
    shared = launcher.dir / "shared"
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    state = shared / "state"
    res = _reader(launcher, "--state-dir", str(state))
    assert res.returncode == 2, res.stderr
    assert (f"state_dir {state} is not safe for root: {state} does not exist; its directory {shared} belongs to "
            f"uid {NOBODY} (nobody), not root: refused (whoever can write there can create it); {OWNER_REMEDY}"
            in res.stderr)
    assert not state.exists()
    # the same check after creating it: a directory planted on the way since the reader's check is caught
    with pytest.raises(LauncherError, match=f"state_dir {state} is not safe for root: {shared} belongs to "
                                            f"uid {NOBODY}"):
        ensure_state_dir(str(state))


def test_log_symlink_planted_by_another_user_is_refused(launcher: Launcher) -> None:
    """Hole: a user who can write the log's directory links the log name to a root file; root appended
    to it and chmodded it 0640."""
    victim = launcher.dir / "victim"
    victim.write_text("root's secret\n")
    victim.chmod(0o600)
    logs = launcher.dir / "logs"
    logs.mkdir()
    os.chown(logs, NOBODY, NOBODY)
    log = logs / "nl.log"
    log.symlink_to(victim)
    os.lchown(log, NOBODY, NOBODY)
    res = _reader(launcher, "--log-file", str(log))
    assert res.returncode == 2, res.stderr
    assert (f"log_file {log} is not safe for root: {logs} belongs to uid {NOBODY} (nobody), not root"
            in res.stderr)
    assert victim.read_text() == "root's secret\n" and victim.stat().st_mode & 0o7777 == 0o600


def test_log_and_state_files_are_never_opened_through_a_symlink(tmp_path: Path) -> None:
    """Even a root-owned link in a root-only directory: root creates these files, it does not follow."""
    victim = tmp_path / "victim"
    victim.write_text("root's secret\n")
    victim.chmod(0o600)
    log = tmp_path / "nl.log"
    log.symlink_to(victim)
    Log(str(log), "reader").info(None, None, "hello")
    assert victim.read_text() == "root's secret\n" and victim.stat().st_mode & 0o7777 == 0o600
    with pytest.raises(OSError) as exc:
        open_mode(str(log), os.O_WRONLY | os.O_APPEND, 0o640)
    assert exc.value.errno == errno.ELOOP
    assert victim.read_text() == "root's secret\n" and victim.stat().st_mode & 0o7777 == 0o600


def test_symlink_on_the_way_must_be_roots_and_its_target_is_checked(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    act = real / "act.sh"
    act.write_text("#!/bin/sh\n")
    act.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to("real")
    assert insecure_reason(str(link / "act.sh")) is None  # root's link in root's directory: followed
    assert insecure_reason(str(link / ".." / "link" / "act.sh")) is None
    (real / "sub").mkdir()
    (tmp_path / "to-sub").symlink_to(real / "sub")
    assert insecure_reason(str(tmp_path / "to-sub" / ".." / "act.sh")) is None  # `..` of real/sub, as open() sees it
    os.lchown(link, NOBODY, NOBODY)  # its owner cannot change a link's target, but keepalived's rule is root
    assert insecure_reason(str(link / "act.sh")) == (f"{link} belongs to uid {NOBODY} (nobody), not root; "
                                                      f"{OWNER_REMEDY}")
    os.lchown(link, 0, 0)
    real.chmod(0o777)  # the target's chain is checked too
    assert insecure_reason(str(link / "act.sh")) == f"{real} is writable by others (mode 0777); {MODE_REMEDY}"
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    assert insecure_reason(str(loop)) == f"{loop}: more than 40 symlinks on the way"


def test_state_dir_or_log_directly_in_a_sticky_directory_is_refused(tmp_path: Path) -> None:
    """/tmp is fine on the way to a file root reads (nobody can replace root's file there), but not
    for one root creates: any user can create the name first (their file, a hard link, a FIFO)."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    for name in ("state", "nl.log"):
        assert insecure_reason(str(sticky / name), created=True) == (
            f"{sticky / name} does not exist; its directory {sticky} is writable by others (mode 1777): refused "
            f"(whoever can write there can create it); choose a directory only root can write to")
    (sticky / "nl.log").write_text("")  # root's own file there: the name is free again after a rotation
    assert insecure_reason(str(sticky / "nl.log"), created=True) == (
        f"{sticky} is writable by others (mode 1777): any of them can create {sticky / 'nl.log'} there before "
        f"root does; choose a directory only root can write to")
    (sticky / "nl.log").write_text("planted\n")
    os.chown(sticky / "nl.log", NOBODY, NOBODY)
    Log(str(sticky / "nl.log"), "worker").info(None, None, "hello")
    assert (sticky / "nl.log").read_text() == "planted\n"
    inside = sticky / "root-dir"  # a root-only directory inside /tmp is fine to create things in
    inside.mkdir(mode=0o755)
    assert insecure_reason(str(inside / "state"), created=True) is None
    assert ensure_state_dir(str(inside / "state")).root == str(inside / "state")


def test_file_modes_under_keepalived_umask(launcher: Launcher) -> None:
    k = launcher.keepalived()  # the stand-in starts the reader with umask 0177, as keepalived does
    k.start()
    k.write('INSTANCE "VI_1" MASTER 100')
    launcher.settle(1)
    k.stop([])
    launcher.settle(2)
    assert launcher.state.stat().st_mode & 0o777 == 0o700
    for name in ("journal", "progress", "worker.lock", "standby.lock", "settings.json"):
        assert (launcher.state / name).stat().st_mode & 0o777 == 0o600, name
    assert launcher.log.stat().st_mode & 0o777 == 0o640


needs_setfacl = needs("setfacl (Debian's acl package; scripts/setup installs it), setpriv and user nobody",
                      attacker.available())


@needs_setfacl
def test_an_acl_entry_that_grants_write_is_refused_as_the_kernel_grants_it() -> None:
    """root:root 0755 shows no writer in its mode bits; an ACL entry may still let a user write.  The
    verdict follows what the kernel lets nobody do, tried for real as nobody."""
    with attacker.arena() as arena:
        _acl_verdicts(arena)


def _acl_verdicts(tmp_path: Path) -> None:
    act = tmp_path / "act.sh"
    act.write_text("#!/bin/sh\n")
    act.chmod(0o755)
    attacker.setfacl("-m", "u:nobody:rwx", str(act))
    assert act.stat().st_mode & 0o777 == 0o775  # the group bits show the mask; the group is root's
    assert attacker.nobody_sh(f": >> {act}").returncode == 0
    assert insecure_reason(str(act)) == (f"{act} is writable by uid {NOBODY} (nobody) through an ACL entry; "
                                         f"setfacl -x u:{NOBODY} it, or choose a path only root can change")
    attacker.setfacl("-m", "m::r-x", str(act))  # the mask takes the write away
    assert attacker.nobody_sh(f": >> {act}").returncode != 0
    assert insecure_reason(str(act)) is None
    attacker.setfacl("-b", str(act))
    attacker.setfacl("-m", "g:nogroup:rwx", str(tmp_path))  # the directory: swap the file
    assert attacker.nobody_sh(f"mv {act} {act}.old && : > {act}").returncode == 0
    assert insecure_reason(str(act)) == (f"{tmp_path} is writable by gid {NOBODY} (nogroup) through an ACL entry; "
                                         f"setfacl -x g:{NOBODY} it, or choose a path only root can change")


def test_an_acl_that_cannot_be_understood_is_refused() -> None:
    entries = struct.pack("<I", 2) + struct.pack("<HHI", 0x01, 7, 0xFFFFFFFF) + struct.pack("<HHI", 0x02, 7, 65534)
    assert parse_acl(entries) == [(0x01, 7, 0xFFFFFFFF), (0x02, 7, 65534)]
    with pytest.raises(ValueError, match="its ACL has format version 3, which the launcher does not know"):
        parse_acl(struct.pack("<I", 3) + entries[4:])
    with pytest.raises(ValueError, match="its ACL is 7 bytes long"):
        parse_acl(entries[:7])
    with pytest.raises(ValueError, match="its ACL has an entry of unknown type 0x40"):
        parse_acl(entries + struct.pack("<HHI", 0x40, 7, 0))


@needs_setfacl
def test_the_worker_checks_a_command_again_before_each_spawn(launcher: Launcher) -> None:
    """The handler was safe when the reader started; an ACL added later lets nobody rewrite it: the
    worker refuses to run it, as that event's failure, with the path and the offender in the log."""
    k = launcher.keepalived()
    k.start()
    k.write('INSTANCE "VI_1" MASTER 100')
    launcher.settle(1)
    assert len(launcher.starts()) == 1
    attacker.setfacl("-m", "u:nobody:rwx", str(launcher.handler))
    k.write('INSTANCE "VI_1" BACKUP 100')
    launcher.settle(2)
    assert len(launcher.starts()) == 1
    assert (f'ERROR #2 INSTANCE "VI_1" BACKUP 100 | action ended: could not start: command {launcher.handler} is '
            f'not safe for root: {launcher.handler} is writable by uid {NOBODY} (nobody) through an ACL entry; '
            f'setfacl -x u:{NOBODY} it') in launcher.log_text()
    k.stop([])


def test_a_bare_command_name_is_the_file_in_the_fixed_path_for_check_config_and_the_worker(
        launcher: Launcher) -> None:
    """`handler = logger ...` (no slash) is looked up in config.COMMAND_PATH when the configuration
    is loaded (whatever PATH check-config runs with): check-config judges /usr/bin/logger and
    passes it, and the worker runs that file.  A name not found there is a configuration
    error in both."""
    launcher.unchecked = "asserted here"
    ini = launcher.dir / "nl.ini"
    ini.write_text("[launcher]\nhandler = logger -t nl-test\n[match INSTANCE VI_2 *]\nhandler = no-such-command-nl\n")
    checked = subprocess.run([*launcher.argv()[:1], "check-config", "--config", str(ini)], capture_output=True,
                             text=True, timeout=60)
    expected = (f"{ini}: [match INSTANCE VI_2 *] handler: 'no-such-command-nl' is not an executable in "
                f"{COMMAND_PATH} (a command without a slash is looked up there, as keepalived does); give its "
                f"absolute path")
    assert checked.returncode != 0 and expected in checked.stdout + checked.stderr, checked
    assert subprocess.run(launcher.argv("--config", str(ini), str(launcher.dir / "none.fifo")), capture_output=True,
                          text=True, timeout=60).stderr.count(expected) >= 1
    ini.write_text("[launcher]\nhandler = logger -t nl-test\n")
    launcher.extra_args += ["--config", str(ini), "--handler", "logger -t nl-test"]  # (the last --handler wins)
    checked = subprocess.run([*launcher.argv()[:1], "check-config", *launcher.argv()[1:]], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked
    k = launcher.keepalived()
    try:
        k.start()
        launcher.wait_started()
        k.write('INSTANCE "VI_1" MASTER 100')
        launcher.wait_for("event 1 ended", lambda: "action ended" in launcher.log_text(), timeout=60)
    finally:
        k.stop([]) if k.proc else None
        launcher.end_processes()
    ended = [line for line in launcher.log_text().splitlines() if "action ended" in line]
    assert "INFO" in ended[0] and "exit 0" in ended[0], ended
    assert "action started: /usr/bin/logger -t nl-test INSTANCE VI_1 MASTER 100" in launcher.log_text()
