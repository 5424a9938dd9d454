"""`check-config`: every message, and exit 0 only when all is well."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support import LAUNCHER, ROOT
from support.marks import needs


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LAUNCHER, "check-config", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    act = tmp_path / "act.sh"
    act.write_text("#!/bin/sh\nexit 0\n")
    act.chmod(0o755)
    ini = tmp_path / "nl.ini"
    ini.write_text(f"[launcher]\nhandler = {act}\nstate_dir = {tmp_path}/state\nlog_file = {tmp_path}/nl.log\n")
    return ini


def test_all_well_exits_0(good: Path) -> None:
    res = _check("--config", str(good))
    assert res.returncode == 0, res.stdout
    assert res.stdout.strip() == f"OK: {good}"


@pytest.mark.parametrize("act_text,mode,message", [
    (None, None, "act.sh: not found"),
    ("#!/bin/sh\n", 0o644, "act.sh: not executable (chmod +x)"),
    ("echo no shebang\n", 0o755, "act.sh: no #! line (execve cannot run it; add e.g. #!/bin/sh)"),
])
def test_action_problems(good: Path, act_text: str | None, mode: int | None, message: str) -> None:
    act = good.parent / "act.sh"
    if act_text is None:
        act.unlink()
    else:
        act.write_text(act_text)
        assert mode is not None
        act.chmod(mode)
    res = _check("--config", str(good))
    assert res.returncode == 2
    assert f"problem: {good}: handler: " in res.stdout and message in res.stdout


def test_config_error_and_unset_handler(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[launcher]\ntimeout = never\n")
    res = _check("--config", str(ini))
    assert res.returncode == 2
    assert res.stdout.strip() == (f"problem: {ini}: [launcher] timeout: 'never' is not allowed; "
                                  "expected seconds, a number > 0")
    ini.write_text(f"[launcher]\nstate_dir = {tmp_path}/s\nlog_file = {tmp_path}/l.log\n")
    res = _check("--config", str(ini))
    assert f"problem: {ini}: [launcher] handler: not set; events will only be logged" in res.stdout


needs_root = needs("root (the check of what root trusts runs only as root, and giving files to another "
                   "user needs root)", os.geteuid() == 0)


@needs_root
def test_insecure_file_is_a_problem_for_root(good: Path) -> None:
    act = good.parent / "act.sh"
    act.chmod(0o777)
    res = _check("--config", str(good))
    assert res.returncode == 2
    assert (f"problem: {good}: handler {act} is not safe for root: {act} is writable by others (mode 0777)"
            in res.stdout)


@needs_root
def test_state_dir_and_log_paths_others_control_are_problems_for_root(good: Path) -> None:
    """What the reader refuses, check-config reports: a state dir below another user's directory, a
    log path whose directory another user owns (they can plant a symlink), a state dir in /tmp."""
    shared = good.parent / "shared"
    shared.mkdir()
    os.chown(shared, 65534, 65534)
    sticky = good.parent / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    res = _check("--config", str(good), "--state-dir", str(shared / "state"), "--log-file", str(shared / "nl.log"))
    assert res.returncode == 2
    for what, path in (("state_dir", shared / "state"), ("log_file", shared / "nl.log")):
        assert (f"problem: {good}: {what} {path} is not safe for root: {path} does not exist; its directory {shared} "
                f"belongs to uid 65534 (nobody), not root: refused (whoever can write there can create it); chown it "
                f"to root, or choose a path only root can change") in res.stdout
    res = _check("--config", str(good), "--state-dir", str(sticky / "state"))
    assert res.returncode == 2
    assert (f"problem: {good}: state_dir {sticky / 'state'} is not safe for root: {sticky / 'state'} does not exist; "
            f"its directory {sticky} is writable by others (mode 1777): refused (whoever can write there can create "
            f"it)") in res.stdout


def _check_with(ini: Path, more: str) -> subprocess.CompletedProcess[str]:
    """check-config of the INI file with `more` lines appended (to its [launcher] section, unless
    they start a section)."""
    with ini.open("a") as fh:
        fh.write(more)
    return _check("--config", str(ini))


@needs_root
def test_on_failure_commands_are_checked_like_handlers(good: Path) -> None:
    """The [launcher] on_failure and a [match] rule's: runnable, and safe for root."""
    hook = good.parent / "hook.sh"
    hook.write_text("echo no shebang\n")
    hook.chmod(0o777)
    res = _check_with(good, f"on_failure = {hook} --page\n"
                            f"[match INSTANCE VI_1 *]\non_failure = {good.parent}/missing\n")
    assert res.returncode == 2
    assert (f"problem: {good}: on_failure {hook} is not safe for root: {hook} is writable by others (mode 0777)"
            in res.stdout)
    assert f"problem: {good}: on_failure: {hook}: no #! line" in res.stdout
    assert f"problem: {good}: [match INSTANCE VI_1 *] on_failure: {good.parent}/missing: not found" in res.stdout


@needs_root
def test_metrics_file_where_others_can_write_is_a_problem_for_root(good: Path) -> None:
    """Root replaces the metrics file: in a directory others can write to, they could plant the name."""
    textfile = good.parent / "textfile"
    textfile.mkdir()
    textfile.chmod(0o1777)
    res = _check_with(good, f"metrics_file = {textfile}/nl.prom\n")
    assert res.returncode == 2
    assert (f"problem: {good}: metrics_file {textfile}/nl.prom is not safe for root: {textfile}/nl.prom does not "
            f"exist; its directory {textfile} is writable by others (mode 1777): refused") in res.stdout
    textfile.chmod(0o755)
    assert _check("--config", str(good)).returncode == 0
    textfile.rmdir()  # the worker makes the file, not the collector's directory
    res = _check("--config", str(good))
    assert res.returncode == 2
    assert (f"problem: {good}: [launcher] metrics_file {textfile}/nl.prom: {textfile} is not a directory; "
            f"create it") in res.stdout


def test_state_dir_too_long_for_the_doorbell_socket(good: Path) -> None:
    """Every worker died on it while check-config said OK."""
    long_dir = "/run/" + "s" * 100
    res = _check("--config", str(good), "--state-dir", long_dir)
    assert res.returncode == 2
    assert res.stdout.strip() == (f"problem: command line: --state-dir: '{long_dir}' is too long: the doorbell "
                                  f"socket {long_dir}/doorbell.sock would be 119 bytes, and a Unix socket path "
                                  f"allows at most 107; choose a shorter state_dir")
    good.write_text(good.read_text().replace("state_dir = ", f"state_dir = {long_dir}\n# "))
    res = _check("--config", str(good))
    assert res.returncode == 2 and f"problem: {good}: [launcher] state_dir: '{long_dir}' is too long" in res.stdout


def test_unwritable_state_and_log_paths(good: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        res = _check("--config", str(good), "--state-dir", "/proc/nl-state", "--log-file", "/proc/nl/x.log")
    else:
        res = _check("--config", str(good), "--state-dir", "/nl-state", "--log-file", "/nl/x.log")
    assert res.returncode == 2
    assert "[launcher] state_dir /" in res.stdout and "cannot create files in /" in res.stdout
    assert "[launcher] log_file /" in res.stdout


KA = """global_defs {{
    notify_fifo {fifo}
    notify_fifo_script {script}
}}
"""


@pytest.mark.parametrize("script,message", [
    ('"{act} --flag \\"x\\""', "nested double quotes in the script command"),
    ('"{dir}/missing --config x"', "missing: not found"),
    ('"{act}" nosuchuser', "script user 'nosuchuser' does not exist"),
])
def test_keepalived_conf_mistakes(good: Path, script: str, message: str) -> None:
    act = good.parent / "act.sh"
    conf = good.parent / "keepalived.conf"
    conf.write_text(KA.format(fifo=good.parent / "n.fifo", script=script.format(act=act, dir=good.parent)))
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert f"problem: {conf}:3: " in res.stdout and message in res.stdout


@needs_root
def test_keepalived_conf_fifo_owner_must_be_the_script_user(good: Path) -> None:
    fifo = good.parent / "n.fifo"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, 1234, 1234)
    conf = good.parent / "keepalived.conf"
    conf.write_text(KA.format(fifo=fifo, script=f'"{good.parent}/act.sh" root'))
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert (f"problem: {conf}:2: notify_fifo {fifo} is not safe for root: {fifo} belongs to uid 1234, not root"
            in res.stdout), res.stdout
    conf.write_text(f"global_defs {{\n    notify_fifo_script \"{good.parent}/act.sh\"\n}}\n")
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert "notify_fifo_script without notify_fifo: keepalived writes no events" in res.stdout


def test_good_keepalived_conf_passes(good: Path) -> None:
    conf = good.parent / "keepalived.conf"
    conf.write_text(KA.format(fifo=good.parent / "n.fifo", script=f'"{good.parent}/act.sh --x \'a b\'" root'))
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 0, res.stdout


def test_userless_notify_fifo_under_script_security_is_a_problem(good: Path) -> None:
    import pwd
    try:
        pwd.getpwnam("keepalived_script")
        pytest.skip("this machine has a keepalived_script user: the lookup would succeed")
    except KeyError:
        pass
    conf = good.parent / "keepalived.conf"
    conf.write_text(f"global_defs {{\n    enable_script_security\n    notify_fifo {good.parent}/n.fifo\n"
                    f"    notify_fifo_script \"{good.parent}/act.sh\" root\n}}\n")
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert f"problem: {conf}:3: notify_fifo without a user: with enable_script_security" in res.stdout
    conf.write_text(conf.read_text().replace("n.fifo\n", "n.fifo root\n"))
    assert _check("--config", str(good), "--keepalived-conf", str(conf)).returncode == 0


def test_every_keepalived_conf_snippet_names_the_fifo_user() -> None:
    """The README's, `--help`'s and the example's global_defs agree, user included: a snippet
    copied without `root` loses every event after a reload (Debian, enable_script_security)."""
    import re
    import subprocess

    def fifo_lines(text: str) -> list[str]:
        return [" ".join(line.split()) for line in text.splitlines()
                if re.match(r"\s*notify_fifo(_script)?\s", line)]

    example = fifo_lines((ROOT / "keepalived.conf.example").read_text())
    assert example and all(line.endswith(" root") for line in example), example
    readme = fifo_lines((ROOT / "README.md").read_text())
    helptext = fifo_lines(subprocess.run([LAUNCHER, "--help"], capture_output=True, text=True, check=True).stdout)
    assert readme == example and helptext == example, (readme, helptext, example)


def test_the_readers_command_line_options_are_checked_as_the_reader_takes_them(good: Path) -> None:
    """check-config takes every option the reader takes, so the very command line of keepalived.conf's
    notify_fifo_script can be checked (it knew only --handler, --state-dir and --log-file)."""
    missing = good.parent / "missing.sh"
    res = _check("--config", str(good), "--on-failure", f"{missing} --page", "--timeout", "never")
    assert res.returncode == 2
    assert res.stdout.strip() == "problem: command line: --timeout: 'never' is not allowed; expected seconds, a number > 0"
    res = _check("--config", str(good), "--on-failure", f"{missing} --page", "--linger", "5", "--detach", "daemon",
                 "--metrics-file", str(good.parent / "nl.prom"), "--log-level", "DEBUG", "--stop-grace", "0.2")
    assert res.returncode == 2
    assert res.stdout.strip() == f"problem: {good}: on_failure: {missing}: not found"


VS_BLOCK = """virtual_server 10.0.0.10 80 {
    protocol TCP
    real_server 192.168.1.11 80 {
        TCP_CHECK {
        }
    }
}
"""


def _lvs_conf(good: Path, defs: str) -> Path:
    conf = good.parent / "keepalived.conf"
    conf.write_text("global_defs {\n" + defs.format(fifo=good.parent / "n.fifo", act=good.parent / "act.sh")
                    + "}\n" + VS_BLOCK)
    return conf


def test_lvs_site_with_the_global_fifo_is_told_the_checker_owns_the_reader(good: Path) -> None:
    """keepalived starts the global notify_fifo's script from its checker process when virtual_server
    blocks exist (docs/keepalived.md, "LVS sites"): check-config says so and what to write instead."""
    conf = _lvs_conf(good, '    notify_fifo {fifo} root\n    notify_fifo_script "{act}" root\n')
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert (f"problem: {conf}:3: notify_fifo_script with virtual_server blocks (line 5): keepalived starts "
            f"the script from its checker process only" in res.stdout)
    assert "`lvs_notify_fifo PATH root` (the same PATH, no lvs_notify_fifo_script)" in res.stdout
    # Without virtual_server blocks the global FIFO is the VRRP process's: nothing to say.
    conf.write_text(conf.read_text().split("virtual_server")[0])
    assert _check("--config", str(good), "--keepalived-conf", str(conf)).returncode == 0


def test_lvs_site_with_one_shared_fifo_passes(good: Path) -> None:
    """The recommended form: one reader, the VRRP process's."""
    conf = _lvs_conf(good, '    vrrp_notify_fifo {fifo} root\n    vrrp_notify_fifo_script "{act}" root\n'
                           '    lvs_notify_fifo {fifo} root\n')
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 0, res.stdout


def test_lvs_script_on_the_shared_fifo_is_a_problem(good: Path) -> None:
    """keepalived drops the checker's script on the VRRP FIFO's path only when it reloads (global_data.c
    runs that check in the checker, which at start inherits the parent's data unchecked): at start
    both processes run a reader (seen with keepalived 2.2.7, docs/keepalived.md "LVS sites")."""
    conf = _lvs_conf(good, '    vrrp_notify_fifo {fifo} root\n    vrrp_notify_fifo_script "{act}" root\n'
                           '    lvs_notify_fifo {fifo} root\n    lvs_notify_fifo_script "{act}" root\n')
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert (f"problem: {conf}:5: lvs_notify_fifo_script on the vrrp_notify_fifo's path: keepalived ignores it "
            f"only from the first reload on" in res.stdout)


def test_lvs_site_with_two_fifos_or_no_lvs_fifo_is_a_problem(good: Path) -> None:
    conf = _lvs_conf(good, '    vrrp_notify_fifo {fifo} root\n    vrrp_notify_fifo_script "{act}" root\n'
                           '    lvs_notify_fifo {fifo}.lvs root\n    lvs_notify_fifo_script "{act}" root\n')
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert f"problem: {conf}:5: vrrp_notify_fifo and lvs_notify_fifo are two FIFOs, each with a script" in res.stdout
    conf = _lvs_conf(good, '    vrrp_notify_fifo {fifo} root\n    vrrp_notify_fifo_script "{act}" root\n')
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert f"problem: {conf}:5: virtual_server blocks, but no lvs_notify_fifo" in res.stdout


def test_a_notify_directive_for_an_event_the_launcher_handles_is_a_problem(good: Path) -> None:
    """The action would run twice: keepalived's directive and the launcher's rule (here its default
    handler) for the same event; a directive for an event the launcher leaves alone is fine."""
    act = good.parent / "act.sh"
    conf = good.parent / "keepalived.conf"
    conf.write_text(KA.format(fifo=good.parent / "n.fifo", script=f'"{act}" root') +
                    f'vrrp_instance VI_1 {{\n    notify_master "{act} promote" root\n}}\n')
    line = len(conf.read_text().splitlines()) - 1
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert res.stdout.splitlines() == [
        f"problem: {conf}:{line}: notify_master of INSTANCE VI_1 still runs from keepalived, and the launcher runs "
        f"{act} for INSTANCE VI_1 MASTER: the action would run twice; remove the directive (`notify-launcher import` "
        f"lists what to remove)"]
    good.write_text(good.read_text() + "[match INSTANCE VI_1 MASTER]\nhandler =\n")
    assert _check("--config", str(good), "--keepalived-conf", str(conf)).returncode == 0


GLOBAL = "global_defs {{\n    notify_fifo {fifo} root\n    notify_fifo_script \"{act}\" root\n}}\n"
VS = "virtual_server 10.0.0.10 80 {\n    protocol TCP\n}\n"


@pytest.mark.parametrize("form", ["inline", "include", "at-conditional", "dollar-definition"])
def test_virtual_server_keepalived_reads_anywhere_makes_the_checker_the_owner(good: Path, form: str) -> None:
    """check-config reads keepalived.conf as keepalived does (kaconf): a virtual_server in an
    included file (Debian's conf.d), behind an `@^host` line, or built from a `$` definition
    makes keepalived run its checker, which then owns the global FIFO's reader: it is said, with
    the block's file:line when it is in another file."""
    conf = good.parent / "keepalived.conf"
    head = GLOBAL.format(fifo=good.parent / "n.fifo", act=good.parent / "act.sh")
    if form == "inline":
        conf.write_text(head + VS)
    elif form == "include":
        (good.parent / "conf.d").mkdir()
        (good.parent / "conf.d" / "lvs.conf").write_text(VS)
        conf.write_text(head + f"include {good.parent}/conf.d/*.conf\n")
    elif form == "at-conditional":
        conf.write_text(head + "@^nosuchhost " + VS)  # every host but `nosuchhost` reads it
    else:
        conf.write_text("$VS=virtual_server 10.0.0.10 80\n" + head + "$VS {\n    protocol TCP\n}\n")
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    line = 4 if form == "dollar-definition" else 3
    vs = f"{good.parent}/conf.d/lvs.conf:1" if form == "include" else f"line {line + 2}"
    assert f"problem: {conf}:{line}: notify_fifo_script with virtual_server blocks ({vs})" in res.stdout, res.stdout


def test_fifo_lines_in_an_include_are_checked_where_they_are(good: Path) -> None:
    """global_defs in an included file: its lines are checked and reported at that file's lines (the
    two-readers form here), not "no notify_fifo_script line"."""
    fifo, act = good.parent / "n.fifo", good.parent / "act.sh"
    inc = good.parent / "global.inc"
    inc.write_text(f"global_defs {{\n    vrrp_notify_fifo {fifo} root\n    vrrp_notify_fifo_script \"{act}\" root\n"
                   f"    lvs_notify_fifo {fifo} root\n    lvs_notify_fifo_script \"{act}\" root\n}}\n")
    conf = good.parent / "keepalived.conf"
    conf.write_text(f"include {inc}\n" + VS)
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert f"problem: {inc}:5: lvs_notify_fifo_script on the vrrp_notify_fifo's path" in res.stdout, res.stdout
    assert "no notify_fifo_script line" not in res.stdout


@pytest.mark.parametrize("key", ["vrrp_notify_fifo", "lvs_notify_fifo"])
@pytest.mark.parametrize("one_line", [False, True], ids=["block", "one-line-global_defs"])
def test_a_child_fifo_on_the_global_fifos_path_is_told_lines_come_twice(good: Path, key: str, one_line: bool) -> None:
    """`notify_fifo P` with `vrrp_notify_fifo P` (or `lvs_notify_fifo P`): keepalived drops the
    second only in the child's own init_global_data (global_data.c, 2.2.7: the VRRP check 300-311
    under prog_type == PROG_TYPE_VRRP, the LVS one 316-326 under PROG_TYPE_CHECKER), which at start
    runs in the parent (main.c:2567), in the child only when it reloads: until then the child has
    two fds on P and writes each line to both (vrrp_notify.c:138-143; check/ipwrapper.c:120-124).
    Seen with 2.2.7 for VRRP (each INSTANCE line read twice; after a SIGHUP "ignoring vrrp FIFO" and
    one fd).  check-config says so, also with `global_defs { notify_fifo ...` on one line."""
    fifo, act = good.parent / "n.fifo", good.parent / "act.sh"
    conf = good.parent / "keepalived.conf"
    first = "global_defs { " if one_line else "global_defs {\n    "
    conf.write_text(f"{first}notify_fifo {fifo} root\n    notify_fifo_script \"{act}\" root\n"
                    f"    {key} {fifo} root\n}}\n")
    res = _check("--config", str(good), "--keepalived-conf", str(conf))
    assert res.returncode == 2
    assert f"problem: {conf}:{3 if one_line else 4}: {key} on the notify_fifo's path" in res.stdout, res.stdout
    assert "writes every" in res.stdout and "line twice" in res.stdout
    conf.write_text(conf.read_text().replace(f"{key} {fifo} root", f"{key} {fifo}.other root"))
    assert f"{key} on the notify_fifo's path" not in _check("--config", str(good), "--keepalived-conf",
                                                           str(conf)).stdout
