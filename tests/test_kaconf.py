"""kaconf: keepalived.conf read as keepalived reads it (docs/keepalived.md "Notify directives").

Properties for the splitters (what keepalived's parser.c does to any text), and example
configurations with the exact directives, users and `file:line` expected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notify_launcher import kaconf
from notify_launcher.kaconf import Directive, Where

# Characters keepalived can read in a line: printable, no NUL/newline (a C string per line).
_TEXT = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\0\n\r")
_WORD = st.text(_TEXT, min_size=1, max_size=12)


def quote_word(word: str) -> str:
    """A word in single quotes for keepalived's escaped split: `\\` and `'` escaped."""
    return "'" + word.replace("\\", "\\\\").replace("'", "\\'") + "'"


@given(st.lists(_WORD, min_size=1, max_size=6))
def test_escaped_split_gives_back_any_quoted_words(argv: list[str]) -> None:
    assert kaconf.split_quoted(" ".join(quote_word(w) for w in argv), escapes=True) == argv


@given(st.lists(_WORD, min_size=1, max_size=6), st.sampled_from(["root", "nobody"]))
def test_a_directive_line_gives_back_its_argv_and_user_from_2_3_2_on(argv: list[str], user: str) -> None:
    """The command inside double quotes on a notify line, as keepalived 2.3.2+ reads it: the line
    split keeping `\\X`, then the command split with escapes."""
    command = " ".join(quote_word(w) for w in argv).replace('"', '\\"')
    line = kaconf.split_quoted(f'notify_master "{command}" {user}', escapes=False)
    assert line[0] == "notify_master" and line[2:] == [user]
    assert kaconf.split_quoted(line[1], escapes=True) == argv


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs"), blacklist_characters='"\0'),
                        min_size=1, max_size=10), min_size=1, max_size=6))
def test_keyword_words_are_split_on_whitespace(tokens: list[str]) -> None:
    assert kaconf.words("  " + " \t ".join(tokens) + " ") == tokens


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"#!\\\0'), max_size=40),
       st.text(_TEXT, max_size=40))
def test_a_comment_goes_and_the_rest_stays(text: str, comment: str) -> None:
    for mark in "#!":
        assert kaconf.decomment(text + mark + comment) == text.lstrip(" \t").rstrip(" \t")


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\\0'), max_size=40))
def test_comment_characters_inside_double_quotes_stay(inside: str) -> None:
    assert kaconf.decomment(f'notify "{inside}"  # c') == f'notify "{inside}"'


@given(st.lists(st.text(st.sampled_from("abc"), max_size=3), min_size=1, max_size=4))
def test_braces_expand_to_each_alternative_in_order(alternatives: list[str]) -> None:
    assert kaconf.expand_braces("x{" + ",".join(alternatives) + "}y") == [f"x{a}y" for a in alternatives]


def test_escapes_as_keepalived_reads_them() -> None:
    assert kaconf.split_quoted(r"a\tb \x41\x4a2 \101 \cA 'x y' \"", escapes=True) == ["a\tb", "AJ2", "A", "\x01",
                                                                                       "x y", '"']
    assert kaconf.split_quoted(r'a\ b "c\"d"', escapes=False) == [r"a\ b", r'c\"d']
    with pytest.raises(kaconf.SplitError):
        kaconf.split_quoted("'open", escapes=True)


def test_decomment_details() -> None:
    assert kaconf.decomment(r"  a \# b # c") == "a # b"
    assert kaconf.decomment("a 'b # c'") == "a 'b"  # single quotes do not protect a comment
    assert kaconf.decomment("a \\") == "a\\"


# -- example configurations -------------------------------------------------------------------------

MAIN = """\
! Configuration File for keepalived
global_defs {
    script_user keepalived_script
    enable_script_security
}
$BIN=/usr/local/sbin
include conf.d/*.conf
include {sync,lvs}.inc
@node1 include only-node1.conf
@^node1 include not-node1.conf

vrrp_instance VI_1 {
    state BACKUP
    notify_master "${BIN}/promote db --reason 'became master'" root   # promote
    notify_backup $BIN/demote    # not replaced: keepalived wants a blank, ',', ')' or the end after $NAME
    notify "/usr/local/sbin/ka-notify"  root  wheel
    notify_master /second/is/ignored
    notify_deleted
}
"""

CONF_D = """\
vrrp_instance VI_2 { notify_fault "/usr/bin/logger fault" nobody
}
"""

SYNC = """\
vrrp_sync_group G1 {
    group {
        VI_1
        VI_2
    }
    notify_master "/usr/local/sbin/group-master G1"
    notify /usr/local/sbin/group-notify
}
"""

LVS = """\
virtual_server 10.0.0.10 80 {
    protocol TCP
    quorum_up "/usr/local/sbin/quorum up"
    quorum_down /usr/local/sbin/quorum-down
    real_server 192.168.1.11 80 {
        notify_up "/usr/local/sbin/rs up" nobody nogroup
        notify_down /usr/local/sbin/rs-down
    }
}
virtual_server fwmark 7 {
    real_server 192.168.1.12 {
        notify_down /usr/local/sbin/rs-down
    }
}
virtual_server 2001:db8:0::53 53 {
    quorum_down /usr/local/sbin/q6
}
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path / "keepalived.conf")


def _d(keyword: str, type_: str, name: str, state: str | None, argv: tuple[str, ...], user: str | None,
       group: str | None, where: Where, vs: str = "", ignored: str | None = None) -> Directive:
    return Directive(keyword, type_, name, state, argv, argv, user, group, where, vs, ignored)


def test_a_realistic_configuration_with_includes(tmp_path: Path) -> None:
    main = _tree(tmp_path, {"keepalived.conf": MAIN, "conf.d/a.conf": CONF_D, "sync.inc": SYNC, "lvs.inc": LVS,
                            "only-node1.conf": "vrrp_instance N1 {\n  notify_stop /bin/n1\n}\n",
                            "not-node1.conf": "vrrp_instance NOT1 {\n  notify_stop /bin/not1\n}\n"})
    os.chmod(tmp_path / "keepalived.conf", 0o644)
    found = kaconf.find(kaconf.read(main, config_id="node1"))
    m, c, s, lv = (str(tmp_path / f) for f in ("keepalived.conf", "conf.d/a.conf", "sync.inc", "lvs.inc"))
    assert found.directives == [  # in the order keepalived reads them: includes in place
        _d("notify_fault", "INSTANCE", "VI_2", "FAULT", ("/usr/bin/logger", "fault"), "nobody", None, Where(c, 1)),
        _d("notify_stop", "INSTANCE", "N1", "STOP", ("/bin/n1",), None, None,
           Where(str(tmp_path / "only-node1.conf"), 2)),
        _d("notify_master", "INSTANCE", "VI_1", "MASTER",
           ("/usr/local/sbin/promote", "db", "--reason", "became master"), "root", None, Where(m, 14)),
        _d("notify_backup", "INSTANCE", "VI_1", "BACKUP", ("$BIN/demote",), None, None, Where(m, 15)),
        _d("notify", "INSTANCE", "VI_1", None, ("/usr/local/sbin/ka-notify",), "root", "wheel", Where(m, 16)),
        _d("notify_master", "INSTANCE", "VI_1", "MASTER", ("/second/is/ignored",), None, None, Where(m, 17),
           ignored="a second notify_master in this block: keepalived ignores it"),
        _d("notify_master", "GROUP", "G1", "MASTER", ("/usr/local/sbin/group-master", "G1"), None, None, Where(s, 6)),
        _d("notify", "GROUP", "G1", None, ("/usr/local/sbin/group-notify",), None, None, Where(s, 7)),
        _d("quorum_up", "VS", "[10.0.0.10]:tcp:80", "UP", ("/usr/local/sbin/quorum", "up"), None, None, Where(lv, 3)),
        _d("quorum_down", "VS", "[10.0.0.10]:tcp:80", "DOWN", ("/usr/local/sbin/quorum-down",), None, None,
           Where(lv, 4)),
        _d("notify_up", "RS", "[192.168.1.11]:tcp:80", "UP", ("/usr/local/sbin/rs", "up"), "nobody", "nogroup",
           Where(lv, 6), vs="[10.0.0.10]:tcp:80"),
        _d("notify_down", "RS", "[192.168.1.11]:tcp:80", "DOWN", ("/usr/local/sbin/rs-down",), None, None,
           Where(lv, 7), vs="[10.0.0.10]:tcp:80"),
        _d("notify_down", "RS", "[192.168.1.12]:none:0", "DOWN", ("/usr/local/sbin/rs-down",), None, None,
           Where(lv, 12), vs="FWM 7"),
        _d("quorum_down", "VS", "[2001:db8::53]:udp:53", "DOWN", ("/usr/local/sbin/q6",), None, None, Where(lv, 16)),
    ]
    assert found.script_user == kaconf.ScriptUser("keepalived_script", None, True, Where(m, 3))
    assert found.deleted_flags == {"VI_1": Where(m, 18)}
    assert found.problems == []


def test_what_keepalived_skips_and_what_this_reader_does_not_follow(tmp_path: Path) -> None:
    main = _tree(tmp_path, {"keepalived.conf": "include x/*.conf\ninclude missing.conf\n~SEQ(i,1,3)\n"
                                               "$M=a \\\n  b\nvrrp_instance V {\n notify_master '/bin/x\n",
                            "x/run.conf": "vrrp_instance X {\n notify_master /bin/x\n}\n"})
    os.chmod(tmp_path / "x/run.conf", 0o755)
    config = kaconf.read(main, config_id="n")
    found = kaconf.find(config)
    m = str(tmp_path / "keepalived.conf")
    assert [p.same for p in found.problems] == [True, True, False, False, True]
    assert [str(p) for p in found.problems] == [
        f"{m}:1: include {tmp_path}/x/run.conf: not a regular non-executable file (keepalived skips it)",
        f"{m}:2: include missing.conf: no file matches (keepalived skips it too)",
        f"{m}:3: ~SEQ is not followed by this reader (keepalived repeats lines with it): convert the directives "
        f"it generates by hand",
        f"{m}:4: multi-line definition $M is not followed by this reader: convert the directives that use it by hand",
        f"{m}:6: block of 'vrrp_instance' not closed at the end of the configuration (keepalived reads it to the "
        f"end too)",
    ]
    assert [(d.name, d.ignored) for d in found.directives] == [
        ("V", "keepalived cannot split this line (missing terminating ') and ignores it")]


def test_argv_that_depends_on_the_keepalived_release(tmp_path: Path) -> None:
    """2.1.5-2.3.1 unescape the line and then the command; 2.3.2+ only the command."""
    main = _tree(tmp_path, {"keepalived.conf": 'vrrp_instance V {\n notify_master "/bin/x a\\ b"\n}\n'})
    (d,) = kaconf.find(kaconf.read(main, config_id="n")).directives
    assert d.argv == ("/bin/x", "a b") and d.argv_before_232 == ("/bin/x", "a", "b")


def test_an_unquoted_command_with_arguments_takes_them_as_user_and_group(tmp_path: Path) -> None:
    main = _tree(tmp_path, {"keepalived.conf": "vrrp_instance V {\n notify_master /bin/x arg1 arg2 arg3\n}\n"})
    (d,) = kaconf.find(kaconf.read(main, config_id="n")).directives
    assert (d.argv, d.user, d.group) == (("/bin/x",), "arg1", "arg2")


@pytest.mark.parametrize("mark", ["²", "9" * 30, "4294967296999"])
def test_a_fwmark_that_is_no_number_is_a_problem_not_a_crash(tmp_path: Path, mark: str) -> None:
    """str.isdigit() passes '²', which int() refuses, and a number past 32 bits is no fwmark: the
    virtual server is named as a problem, the import goes on."""
    main = _tree(tmp_path, {"keepalived.conf": f"virtual_server fwmark {mark} {{\n  quorum_up /bin/up\n}}\n"})
    found = kaconf.find(kaconf.read(main))
    assert not found.directives
    assert [p.reason for p in found.problems] == [
        f"virtual_server fwmark {mark}: not an address and port, fwmark or group this reader knows"]
