"""keepalived.conf read as keepalived reads it, and every notify directive found in it.

What `import` needs to run, from the launcher, exactly the scripts keepalived runs today: each
directive's command, user and group, the block and the FIFO line it belongs to, and `file:line`.
keepalived's rules (lib/parser.c, lib/notify.c; docs/keepalived.md "Notify directives"):

- lines: CR/LF and leading blanks dropped; `#` and `!` outside double quotes start a comment (`\\#`,
  `\\!` stand for themselves); `@ID line` / `@^ID line` kept only for (not for) config id ID;
  `$NAME=value` definitions replaced as `$NAME` / `${NAME}`; `include GLOB` (with `{a,b}`), relative
  to the including file's directory, executable or non-regular matches skipped; a `{` or `}` outside
  quotes ends a line and what follows it is the next line.
- words: whitespace separates them, `"..."` is one word (no escapes).
- a directive's command: the line split again with quotes and escapes (word 1 the command, 2 and 3
  user and group), then the command split into argv with escapes.  keepalived 2.1.5 to 2.3.1 also
  unescape the line; 2.3.2 and later keep its `\\X`: both are computed, and a directive whose argv
  differs between the two is reported.

What this reader does not follow (multi-line or parameterised definitions, `~SEQ`, `~LST`) is a
`Problem` naming the line, never a silent guess.  Pure: files are read, nothing else is touched.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from notify_launcher.errors import EXIT_UNUSABLE, LauncherError

#: keepalived reads lines into a 1024-byte buffer (parser.h MAXBUF).
MAXBUF = 1024
MAX_INCLUDE_DEPTH = 32  # keepalived has none; a file including itself would never end
_WS = " \t\f\n\r\v"
_BLANK = " \t"


@dataclass(frozen=True)
class Where:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """Something in the configuration this reader does not follow (`same`: False), or that
    keepalived skips or ignores as this reader does (`same`: True)."""

    where: Where
    reason: str
    same: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class Node:
    """One configuration line: its words, the line itself (keepalived re-splits a script's line),
    where it is, and its `{ }` block if it has one."""

    words: list[str]
    text: str
    where: Where
    block: list[Node] | None = None

    @property
    def keyword(self) -> str:
        return self.words[0]


@dataclass
class Config:
    nodes: list[Node] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# -- splitting ------------------------------------------------------------------------------------

def decomment(text: str) -> str:
    """parser.c decomment(): leading blanks and the comment go, `\\#`/`\\!` outside quotes lose
    their backslash, trailing blanks go; a final lone backslash stays (a continuation mark)."""
    chars = list(text.lstrip(_BLANK))
    quote = False
    cont = False
    skip: int | None = None
    i = 0
    while i < len(chars):
        c = chars[i]
        if c == '"':
            if skip is None:
                quote = not quote
        elif c == "\\":
            if i + 1 >= len(chars):
                del chars[i]
                cont = True
                break
            if not quote and chars[i + 1] in "#!":
                del chars[i]  # the `#` or `!` is now at i: step over it
                i += 1
            else:
                i += 2
            continue
        elif c in "#!" and not quote and skip is None:
            skip = i
        i += 1
    if skip is not None:
        del chars[skip:]
    out = "".join(chars).rstrip(_BLANK)
    return out + "\\" if cont else out


def words(text: str) -> list[str]:
    """parser.c alloc_strvec_r(): a keyword line's words; `"..."` is one word without its quotes,
    an unmatched quote ends the line."""
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            return out
        if text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                return out
            out.append(text[i + 1:end])
            i = end + 1
        else:
            start = i
            while i < n and text[i] not in _WS + '"':
                i += 1
            out.append(text[start:i])


class SplitError(ValueError):
    pass


def _byte(value: int) -> str:
    """One byte as the str the file's bytes decode to (UTF-8 with surrogateescape)."""
    value &= 0xFF
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _escape(text: str, i: int, max_hex: int) -> tuple[str, int]:
    """The character `\\` at text[i-1] stands for, and the index after it (parser.c)."""
    c = text[i]
    if c == "x" and i + 1 < len(text) and text[i + 1] in "0123456789abcdefABCDEF":
        j, value = i + 1, 0
        while j < len(text) and j - (i + 1) < max_hex and text[j] in "0123456789abcdefABCDEF":
            value = (value << 4) | int(text[j], 16)
            j += 1
        return _byte(value), j
    if c == "c" and i + 1 < len(text):
        return chr(ord(text[i + 1]) & 0x1F), i + 2
    if "0" <= c <= "7":
        j, value = i, 0
        while j < len(text) and j - i < 3 and "0" <= text[j] <= "7":
            value = (value << 3) + int(text[j])
            j += 1
        return _byte(value), j
    return _ESCAPES.get(c, c), i + 1


def split_quoted(text: str, escapes: bool, max_hex: int = 2) -> list[str]:
    """parser.c alloc_strvec_quoted_escaped() (escapes) or alloc_strvec_quoted(): words separated
    by whitespace, `'...'` and `"..."` group, `\\` escapes (without `escapes`, `\\X` is kept as is).
    Raises SplitError where keepalived gives up on the line."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote = ""
        while i < n:
            stops = (quote + "\\") if quote else (_WS + "'\"\\")
            j = i
            while j < n and text[j] not in stops:
                j += 1
            word.append(text[i:j])
            if j >= n:
                if quote:
                    raise SplitError(f"missing terminating {quote}")
                i = n
                break
            i = j
            if text[i] == "\\":
                i += 1
                if i >= n:
                    raise SplitError("a backslash at the end")
                if escapes:
                    char, i = _escape(text, i, max_hex)
                    word.append(char)
                else:
                    word.append("\\" + text[i])
                    i += 1
            elif quote:
                quote = ""
                i += 1
            elif text[i] in "'\"":
                quote = text[i]
                i += 1
            else:
                break
        out.append("".join(word))
    return out


# -- reading --------------------------------------------------------------------------------------

def expand_braces(pattern: str) -> list[str]:
    """glob(3)'s GLOB_BRACE: `a{b,c{d,e}}f` -> abf, acdf, acef (a `\\` protects the next character)."""
    depth, start = 0, -1
    commas: list[int] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            if depth == 0:
                start, commas = i, []
            depth += 1
        elif c == "," and depth == 1:
            commas.append(i)
        elif c == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                cuts = [start] + commas + [i]
                head, tail = pattern[:start], pattern[i + 1:]
                return [x for k in range(len(cuts) - 1)
                        for x in expand_braces(head + pattern[cuts[k] + 1:cuts[k + 1]] + tail)]
        i += 1
    return [pattern]


def default_config_id() -> str:
    """keepalived's config id without `-i`: the host name up to its first dot (main.c)."""
    return socket.gethostname().split(".", 1)[0]


class _Reader:
    """Files -> logical lines -> nodes, with keepalived's include, @, $ and brace rules.

    Why one class of ~200 lines: keepalived applies these rules in one pass with shared state (the
    `$` definitions, the include depth, the open blocks), and each method is one of its rules; the
    tokenizer underneath is the module's pure functions, tested on their own."""

    def __init__(self, config_id: str | None) -> None:
        self.config_id = config_id
        self.defs: dict[str, str] = {}
        self.config = Config()
        self.stack: list[list[Node]] = [self.config.nodes]

    def problem(self, where: Where, reason: str, same: bool = False) -> None:
        self.config.problems.append(Problem(where, reason, same))

    def read_file(self, path: str, depth: int) -> None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise LauncherError(f"{path}: cannot read: {exc.strerror}", EXIT_UNUSABLE) from None
        self.config.files.append(path)
        for number, raw in enumerate(data.split(b"\n"), 1):
            where = Where(path, number)
            if len(raw) >= MAXBUF - 1:
                self.problem(where, f"line longer than {MAXBUF - 2} bytes: keepalived reads it in pieces")
            line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if line:
                self.logical(decomment(line), where, os.path.dirname(path), depth)

    def logical(self, text: str, where: Where, directory: str, depth: int) -> None:
        """One decommented line: an @-condition, a definition, substitutions (then again, as read_line
        does when they made a new @ or $), then include, then the brace split."""
        for _ in range(100):
            if text[:1] == "@":
                text = self.conditional(text)
            if not text or (text[0] == "$" and self.definition(text, where)):
                return
            if text.startswith(("~SEQ", "~LST")):
                self.problem(where, f"{text[:4]} is not followed by this reader (keepalived repeats lines "
                                    f"with it): convert the directives it generates by hand")
                return
            if text[0] == "~" or "$" not in text:
                break
            replaced = self.substitute(text, where, directory)
            if replaced is None:
                return
            if replaced == text:
                break
            text = decomment(replaced)
            if text[:1] != "@" and "$" not in text:
                break
        else:
            self.problem(where, "definitions expand into each other without end")
            return
        if text and not self.include(text, where, directory, depth):
            self.pieces(text, where, directory, depth)

    def conditional(self, text: str) -> str:
        """`@ID rest` / `@^ID rest`: rest if the config id matches (does not), else nothing."""
        reverse = text[1:2] == "^"
        start = 2 if reverse else 1
        ends = [k for k in (text.find(" ", start), text.find("\t", start)) if k >= 0]
        if not ends:
            return ""
        end = min(ends)
        match = self.config_id is not None and text[start:end] == self.config_id
        return text[end:].lstrip(_BLANK) if match != reverse else ""

    def definition(self, text: str, where: Where) -> bool:
        """`$NAME=value` (check_definition); False if the line is not one."""
        name_end = 1
        if not (len(text) > 1 and (text[1].isalpha() or text[1] == "_")):
            return False
        while name_end < len(text) and text[name_end] != "=":
            if not (text[name_end].isalnum() or text[name_end] == "_"):
                return False
            name_end += 1
        if name_end >= len(text):
            return False
        value = text[name_end + 1:].lstrip(_BLANK)
        if value.endswith("\\"):
            self.problem(where, f"multi-line definition ${text[1:name_end]} is not followed by this reader: "
                                f"convert the directives that use it by hand")
            value = ""
        self.defs[text[1:name_end]] = value
        return True

    def substitute(self, text: str, where: Where, directory: str) -> str | None:
        """replace_param(): `$NAME` (ended by a blank, `,`, `)` or the end) or `${NAME}`; the
        replacement is scanned again.  None when a definition this reader does not follow is used."""
        out = text
        pos = out.find("$")
        for _ in range(1000):
            if pos < 0 or pos + 1 >= len(out):
                return out
            braced = out[pos + 1] == "{"
            start = pos + 2 if braced else pos + 1
            end = start
            while end < len(out) and (out[end].isalnum() or out[end] == "_"):
                end += 1
            name = out[start:end]
            ok = bool(name) and (name[0].isalpha() or name[0] == "_")
            if braced:
                ok = ok and end < len(out) and out[end] == "}"
            else:
                ok = ok and (end >= len(out) or out[end] in " \t,)")
            if ok and name == "_RANDOM" and name not in self.defs:
                self.problem(where, "$_RANDOM is different at every read: convert the directives that use it by hand")
                return None
            value = self._value(name, directory) if ok else None
            if value is None:
                if ok and braced and end < len(out) and out[end] == " ":
                    self.problem(where, f"definition ${{{name} ...}} with parameters is not followed by this reader")
                    return None
                pos = out.find("$", pos + 1)
                continue
            out = out[:pos] + value + out[end + 1 if braced else end:]
            if value.lstrip(_BLANK).startswith("~"):
                return out
        self.problem(where, "definitions expand into each other without end")
        return None

    def _value(self, name: str, directory: str) -> str | None:
        """A definition's value; keepalived's standard ones unless redefined (parser.c
        set_std_definitions; _RANDOM differs at every read: refused by the caller)."""
        if name in self.defs:
            return self.defs[name]
        return {"_PWD": os.path.abspath(directory or "."), "_INSTANCE": self.config_id or "", "_HASH": "#",
                "_BANG": "!"}.get(name)

    def include(self, text: str, where: Where, directory: str, depth: int) -> bool:
        """parser.c check_include(): `include` (or includer/m/w/b/a) and a glob, read in place."""
        if not text.startswith("include") or len(text) < 8:
            return False
        if text[7] in _WS:
            pattern = text[8:]
        elif len(text) > 8 and text[7] in "rmwba" and text[8] in _WS:
            pattern = text[9:]
        else:
            return False
        pattern = pattern.lstrip(_BLANK)
        if depth >= MAX_INCLUDE_DEPTH:
            self.problem(where, f"includes nested deeper than {MAX_INCLUDE_DEPTH}: an include loop?")
            return True
        matches: list[str] = []
        for one in expand_braces(pattern):
            absolute = one if one.startswith("/") else os.path.join(directory or ".", one)
            matches += sorted(glob.glob(absolute)) if glob.has_magic(absolute) else (
                [absolute] if os.path.lexists(absolute) else [])
        if not matches:
            self.problem(where, f"include {pattern}: no file matches (keepalived skips it too)", same=True)
        for path in matches:
            try:
                st = os.stat(path)
            except OSError as exc:
                self.problem(where, f"include {path}: {exc.strerror} (keepalived skips it)", same=True)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o111:
                self.problem(where, f"include {path}: not a regular non-executable file (keepalived skips it)", same=True)
                continue
            self.read_file(path, depth + 1)
        return True

    def pieces(self, text: str, where: Where, directory: str, depth: int) -> None:
        """A `{` or `}` outside double quotes ends the line; the rest is read as the next line."""
        cut = -1
        if text[0] in "{}":
            cut = 0
        else:
            i = 0
            while i < len(text):
                if text[i] == '"':
                    close = text.find('"', i + 1)
                    if close < 0:
                        break
                    i = close + 1
                    continue
                if text[i] in "{}":
                    cut = i
                    break
                i += 1
        if cut < 0:
            self.node(text.rstrip(_BLANK), where)
            return
        if cut == 0:
            head, rest = text[0], text[1:].lstrip(_BLANK)
        else:
            head, rest = text[:cut].rstrip(_BLANK), text[cut:]
        self.node(head, where)
        rest = rest.rstrip(_BLANK)
        if rest:
            self.logical(rest, where, directory, depth)

    def node(self, text: str, where: Where) -> None:
        if text == "{":
            level = self.stack[-1]
            if not level or level[-1].block is not None:
                self.problem(where, "'{' without a keyword before it (keepalived ignores it)", same=True)
                return
            level[-1].block = []
            self.stack.append(level[-1].block)
        elif text == "}":
            if len(self.stack) == 1:
                self.problem(where, "extra '}' (keepalived ignores it)", same=True)
            else:
                self.stack.pop()
        else:
            found = words(text)
            if found:
                self.stack[-1].append(Node(found, text, where))


def read(path: str, config_id: str | None = None) -> Config:
    """The configuration at `path` as a tree of nodes, includes read in place.  `config_id` decides
    `@ID` lines (keepalived's `-i`; default: the host name up to its first dot)."""
    reader = _Reader(default_config_id() if config_id is None else config_id)
    reader.read_file(path, 0)
    if len(reader.stack) > 1:
        opened = reader.stack[-2][-1]
        reader.problem(opened.where, f"block of '{opened.keyword}' not closed at the end of the configuration "
                                     f"(keepalived reads it to the end too)", same=True)
    return reader.config


# -- notify directives ----------------------------------------------------------------------------

#: keyword -> the state it runs for (None: every state, with the event's fields appended).
VRRP_SCRIPTS = {"notify_master": "MASTER", "notify_backup": "BACKUP", "notify_fault": "FAULT",
                "notify_stop": "STOP", "notify_deleted": "DELETED", "notify": None,
                "notify_master_rx_lower_pri": "MASTER_RX_LOWER_PRI"}
GROUP_SCRIPTS = {k: v for k, v in VRRP_SCRIPTS.items() if k not in ("notify_deleted", "notify_master_rx_lower_pri")}
VS_SCRIPTS = {"quorum_up": "UP", "quorum_down": "DOWN"}
FIFO_KEYWORDS = tuple(f"{p}notify_fifo{s}" for p in ("", "vrrp_", "lvs_") for s in ("", "_script"))
RS_SCRIPTS = {"notify_up": "UP", "notify_down": "DOWN"}


@dataclass(frozen=True)
class Directive:
    """One notify directive: what keepalived runs, for which FIFO lines, as whom.

    `argv` is keepalived's argv without the appended event fields (`appends`: the generic `notify`
    gets TYPE NAME STATE PRIORITY); `argv_before_232` the argv keepalived 2.1.5-2.3.1 build (they
    unescape the line twice).  `state` None: every state.  `vs`: an RS's virtual server."""

    keyword: str
    type: str
    name: str
    state: str | None
    argv: tuple[str, ...]
    argv_before_232: tuple[str, ...]
    user: str | None
    group: str | None
    where: Where
    vs: str = ""
    ignored: str | None = None  # why keepalived itself ignores it

    @property
    def appends(self) -> bool:
        return self.state is None


@dataclass(frozen=True)
class ScriptUser:
    """global_defs' `script_user USER [GROUP]` and `enable_script_security`."""

    user: str | None = None
    group: str | None = None
    security: bool = False
    where: Where | None = None


@dataclass
class Found:
    directives: list[Directive] = field(default_factory=list)
    script_user: ScriptUser = ScriptUser()
    #: `notify_deleted` (with or without a command): instance name -> where; it turns DELETED on
    deleted_flags: dict[str, Where] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: global_defs' FIFO lines already there (fifo_write_vrrp_states_on_reload too): (keyword, where)
    fifos: list[tuple[str, Where]] = field(default_factory=list)
    #: `virtual_server` blocks exist: keepalived runs its checker process too (an LVS site)
    lvs: bool = False


def _directive(node: Node, type_: str, name: str, state: str | None, vs: str = "") -> Directive:
    """A script line as notify_script_init() reads it."""
    try:
        line = split_quoted(node.text, escapes=False)
        old = split_quoted(node.text, escapes=True, max_hex=MAXBUF)
        argv = split_quoted(line[1], escapes=True) if len(line) > 1 else []
        argv_old = split_quoted(old[1], escapes=True, max_hex=MAXBUF) if len(old) > 1 else []
    except SplitError as exc:
        return Directive(node.keyword, type_, name, state, (), (), None, None, node.where, vs,
                         ignored=f"keepalived cannot split this line ({exc}) and ignores it")
    ignored = None if argv else "no command: keepalived ignores it"
    user = line[2] if len(line) > 2 else None
    group = line[3] if len(line) > 3 else None
    return Directive(node.keyword, type_, name, state, tuple(argv), tuple(argv_old), user, group, node.where,
                     vs, ignored)


def _first(found: Found, seen: set[tuple[str, str, str, str]], d: Directive) -> None:
    """keepalived keeps the first of two same directives in a block and ignores the second."""
    key = (d.type, d.name, d.vs, d.keyword)
    if key in seen:
        d = Directive(d.keyword, d.type, d.name, d.state, d.argv, d.argv_before_232, d.user, d.group, d.where,
                      d.vs, ignored=f"a second {d.keyword} in this block: keepalived ignores it")
    seen.add(key)
    found.directives.append(d)


def _vs_name(node: Node, found: Found) -> tuple[str | None, str]:
    """(the VS as FIFO lines print it, its protocol word for its real servers); None: unsupported."""
    protocol = ""
    for child in node.block or []:
        if child.keyword == "protocol" and len(child.words) > 1:
            protocol = child.words[1].lower()
    args = node.words[1:]
    if args[:1] == ["group"]:
        found.problems.append(Problem(node.where, "virtual_server group: the name its FIFO lines carry is not "
                                                  "verified here; convert its directives by hand"))
        return None, ""
    if args[:1] == ["fwmark"] and len(args) > 1 and args[1].isascii() and args[1].isdigit() and len(args[1]) <= 10:
        return f"FWM {int(args[1])}", protocol or "none"
    if len(args) >= 1:
        proto = protocol or "udp"  # check_data.c: an address VS without protocol is UDP
        address = _trio(args[0], args[1] if len(args) > 1 else "0", proto)
        if address is not None:
            return address, proto
    found.problems.append(Problem(node.where, f"virtual_server {' '.join(args)}: not an address and port, "
                                              f"fwmark or group this reader knows"))
    return None, ""


def _trio(address: str, port: str, proto: str) -> str | None:
    """utils.c inet_sockaddrtotrio(): `[ADDR]:PROTO:PORT`, the address as inet_ntop prints it."""
    if proto not in ("tcp", "udp", "sctp", "none") or not port.isdigit():
        return None
    try:
        return f"[{ipaddress.ip_address(address)}]:{proto}:{int(port)}"
    except ValueError:
        return None


def _blocks(nodes: list[Node], keyword: str) -> Iterator[Node]:
    return (n for n in nodes if n.keyword == keyword and n.block is not None)


def find(config: Config) -> Found:
    """Every notify directive of every block, and global_defs' script user and security."""
    found = Found(problems=list(config.problems))
    seen: set[tuple[str, str, str, str]] = set()
    user = ScriptUser()
    for g in _blocks(config.nodes, "global_defs"):
        for n in g.block or []:
            if n.keyword == "script_user" and len(n.words) > 1:
                user = ScriptUser(n.words[1], n.words[2] if len(n.words) > 2 else None, user.security, n.where)
            elif n.keyword == "enable_script_security":
                user = ScriptUser(user.user, user.group, True, user.where or n.where)
            elif n.keyword in FIFO_KEYWORDS or n.keyword == "fifo_write_vrrp_states_on_reload":
                found.fifos.append((n.keyword, n.where))
    found.script_user = user
    for kind, type_, scripts in (("vrrp_instance", "INSTANCE", VRRP_SCRIPTS),
                                 ("vrrp_sync_group", "GROUP", GROUP_SCRIPTS)):
        for block in _blocks(config.nodes, kind):
            if len(block.words) < 2:
                continue
            name = block.words[1]
            for n in block.block or []:
                if n.keyword == "notify_deleted" and type_ == "INSTANCE" and len(n.words) < 2:
                    found.deleted_flags.setdefault(name, n.where)
                elif n.keyword in scripts:
                    if n.keyword == "notify_deleted":
                        found.deleted_flags.setdefault(name, n.where)
                    _first(found, seen, _directive(n, type_, name, scripts[n.keyword]))
    for block in _blocks(config.nodes, "virtual_server"):
        found.lvs = True
        vs, proto = _vs_name(block, found)
        for n in block.block or []:
            if n.keyword in VS_SCRIPTS and vs is not None:
                _first(found, seen, _directive(n, "VS", vs, VS_SCRIPTS[n.keyword]))
            elif n.keyword == "real_server" and n.block is not None:
                rs = _trio(n.words[1], n.words[2] if len(n.words) > 2 else "0", proto) if len(n.words) > 1 else None
                for m in n.block:
                    if m.keyword not in RS_SCRIPTS:
                        continue
                    if vs is None or rs is None:
                        found.problems.append(Problem(m.where, f"{m.keyword}: the real server's FIFO name is not "
                                                               f"known here; convert it by hand"))
                        continue
                    _first(found, seen, _directive(m, "RS", rs, RS_SCRIPTS[m.keyword], vs))
    return found
