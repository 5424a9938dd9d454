"""The words notify-launcher takes as a command: every one but the reader's own command line
(keepalived runs `notify-launcher [options] FIFO`, or `serve` runs it as a service).

A module of its own, importing nothing: cli.py reads them before it catches SIGTERM, and
stopping.py to tell, in /proc, a reader from an operator's command.
"""

#: Commands that start no reader (`_worker`: a transient systemd unit's worker).
NOT_THE_READER = ("check-config", "send", "status", "history", "wait", "log", "import", "_worker")
#: Every command word.
COMMANDS = ("serve", *NOT_THE_READER)
