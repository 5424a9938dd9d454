#!/bin/bash
# One scenario, inside the booted container (nl-scenario.service runs it; installed as
# /opt/nl-test/scenario.sh).  Environment (from /etc/nl-test/env, written by boot.sh):
#     SCENARIO  stop-auto | stop-daemon | serve-restart
#     DETACH    the `[launcher] detach` value to write ("" = write no detach key)
# It writes everything the host checks into /results (a directory bound from the host):
#     records       the handler's own record (support.recorder: start SEQ TIME TYPE NAME STATE PRIORITY, ...)
#     timeline      "NAME EPOCH" marks: keepalived_start, stop_begin, stop_end, settled, ...
#     facts         "key=value": unit properties, pids, what is left running
#     launcher.log  /var/log/notify-launcher.log;  journal.txt  the container's journal
#     ps-*.txt, cgls-*.txt   process snapshots;  status.json   `notify-launcher status --json`
#     scenario.log  this script's trace;  done    written last
set -u
R=/results
T=/opt/nl-test
NL=/opt/notify-launcher/venv/bin/notify-launcher
exec >> "$R/scenario.log" 2>&1

now() { date +%s.%N; }
say() { echo "$(date +%H:%M:%S.%N | cut -c1-12) $*"; }
mark() { echo "$1 $(now)" >> "$R/timeline"; say "mark $1"; }
fact() { echo "$1=$2" >> "$R/facts"; say "fact $1=$2"; }
records() { cat "$R/records" 2>/dev/null; }
# first start record of STATE (nth: $2, default 1): "SEQ TIME"
started() { records | awk -v s="$1" -v n="${2:-1}" '$1 == "start" && $6 == s && ++k == n { print $2, $3 }'; }
ended() { records | awk -v q="$1" '$1 == "end" && $2 == q { found = 1 } END { exit !found }'; }
# arithmetic on epoch times (awk's default output format would round them to 6 digits)
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f\n", a + b }'; }
before() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
# wait until `started STATE N` prints something; echoes "SEQ TIME"
wait_started() {
    local state=$1 n=$2 timeout=$3 deadline got
    deadline=$(add "$(now)" "$timeout")
    while :; do
        got=$(started "$state" "$n")
        [ -n "$got" ] && { echo "$got"; return 0; }
        before "$(now)" "$deadline" || return 1
        sleep 0.05
    done
}
# wait (polling) until the command "$2..." succeeds, at most $1 seconds
wait_until() {
    local timeout=$1 deadline
    shift
    deadline=$(add "$(now)" "$timeout")
    until "$@"; do
        before "$(now)" "$deadline" || return 1
        sleep 0.05
    done
}
launcher_logged() { grep -q -F "$1" /var/log/notify-launcher.log 2>/dev/null; }
# processes that could still finish an action: handlers and launcher processes
survivors() { pgrep -f -a "$T/handler.sh|notify_launcher|notify-launcher" | grep -v -e pgrep -e scenario.sh; }

snapshot() {
    ps -eo pid,ppid,pgid,sid,args > "$R/ps-$1.txt"
    {
        echo "# pid -> cgroup (unified hierarchy) of every process"
        for p in /proc/[0-9]*; do
            cg=$(grep '^0::' "$p/cgroup" 2>/dev/null | cut -d: -f3-)
            args=$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)
            [ -n "$args" ] && echo "${p#/proc/} $cg $args"
        done
    } >> "$R/ps-$1.txt"
    systemd-cgls --no-pager > "$R/cgls-$1.txt" 2>&1
}

collect() {
    cp /var/log/notify-launcher.log "$R/launcher.log" 2>/dev/null
    "$NL" status --json > "$R/status.json" 2>&1
    journalctl -b --no-pager -o short-precise > "$R/journal.txt" 2>&1
    systemctl cat keepalived.service > "$R/keepalived.service.txt" 2>&1
    # empty when Debian's packaged files (the unit among them) are unchanged
    fact keepalived_package_modified "$(dpkg -V keepalived | grep -c /lib/systemd/)"
    fact keepalived_killmode "$(systemctl show -P KillMode keepalived.service)"
    fact keepalived_active "$(systemctl is-active keepalived.service)"
    systemctl list-units --all --no-pager 'notify-launcher*' > "$R/units.txt" 2>&1
    systemctl status --all --no-pager --lines=20 'notify-launcher*' >> "$R/units.txt" 2>&1
    snapshot end
}

setup() {
    say "scenario $SCENARIO, detach=${DETACH:-<no key>}"
    fact systemd_version "$(systemctl --version | head -1)"
    fact cgroup_fs "$(stat -f -c %T /sys/fs/cgroup)"
    fact launcher_version "$("$NL" --version 2>&1)"
    # keepalived's VRRP interface: a veth pair (the kernel has no dummy interfaces), private to the
    # container's network namespace.
    ip link add vrrp0 type veth peer name vrrp1
    ip link set vrrp1 up
    ip link set vrrp0 up
    ip addr add 192.168.77.1/24 dev vrrp0
    mkdir -p /run/keepalived /etc/keepalived
    cp "$T/keepalived-$1.conf" /etc/keepalived/keepalived.conf
    {
        echo "[launcher]"
        echo "handler = $T/handler.sh"
        echo "timeout = 60"
        echo "log_level = DEBUG"
        [ -n "${DETACH:-}" ] && echo "detach = $DETACH"
    } > /etc/keepalived/notify-launcher.ini
    cp /etc/keepalived/notify-launcher.ini "$R/notify-launcher.ini"
}

# (a) and (b): keepalived runs the launcher as notify_fifo_script; `systemctl stop keepalived`
# while the MASTER action (10 s) runs (the STOP action takes 3 s).  Then wait until MASTER and STOP actions ended, or until
# nothing is left that could end them (and the MASTER action is well past its 10 s).
scenario_stop() {
    setup script
    printf '* MASTER 10\n* STOP 3\n' > /etc/nl-test/sleeps  # only the MASTER action must outlast the stop
    mark keepalived_start
    systemctl start keepalived.service || say "systemctl start keepalived failed"
    local master mseq mtime stop_seq deadline alive
    if ! master=$(wait_started MASTER 1 60); then
        say "no MASTER action within 60 s"
        return 1
    fi
    read -r mseq mtime <<< "$master"
    fact master_seq "$mseq"
    sleep 1
    snapshot before-stop
    mark stop_begin
    systemctl stop keepalived.service
    mark stop_end
    snapshot after-stop
    fact survivors_after_stop "$(survivors | wc -l)"
    deadline=$(add "$mtime" 35)
    while before "$(now)" "$deadline"; do
        stop_seq=$(started STOP 1 | cut -d' ' -f1)
        if ended "$mseq" && [ -n "$stop_seq" ] && ended "$stop_seq"; then
            say "MASTER and STOP actions ended"
            break
        fi
        alive=$(survivors | wc -l)
        if [ "$alive" = 0 ] && before "$(add "$mtime" 12)" "$(now)"; then
            say "nothing left running, 12 s after the MASTER action started"
            break
        fi
        sleep 0.1
    done
    mark settled
}

# (c): notify-launcher-serve.service reads the FIFO; keepalived is restarted while the MASTER
# action runs; events of both keepalived runs must be handled, in order, by the same service.
scenario_serve() {
    setup serve
    printf '* MASTER 3\n* STOP 3\n' > /etc/nl-test/sleeps
    cp "$T/notify-launcher-serve.service" /etc/systemd/system/
    systemctl daemon-reload
    mark serve_start
    systemctl start notify-launcher-serve.service
    # the service reads the FIFO's path (it follows keepalived's FIFO as it comes): wait for its log
    wait_until 60 launcher_logged "reader started" || say "the service did not log its start within 60 s"
    fact serve_pid_before "$(systemctl show -P MainPID notify-launcher-serve.service)"
    mark keepalived_start
    systemctl start keepalived.service || say "systemctl start keepalived failed"
    fact keepalived_pid_before "$(systemctl show -P MainPID keepalived.service)"
    if ! wait_started MASTER 1 60 > /dev/null; then
        say "no MASTER action within 60 s"
        return 1
    fi
    sleep 0.5
    snapshot before-restart
    mark restart_begin
    systemctl restart keepalived.service
    mark restart_end
    fact keepalived_pid_after "$(systemctl show -P MainPID keepalived.service)"
    if ! wait_started MASTER 2 60 > /dev/null; then
        say "no second MASTER action within 60 s"
    fi
    "$NL" wait --timeout 60 || say "launcher not idle after 60 s"
    # `settled`: the actions the test checks have all run.  keepalived still runs: the poweroff
    # after this script stops it, and the service then rightly runs that STOP too (after `settled`).
    mark settled
    fact serve_pid_after "$(systemctl show -P MainPID notify-launcher-serve.service)"
    fact serve_active "$(systemctl is-active notify-launcher-serve.service)"
    fact serve_restarts "$(systemctl show -P NRestarts notify-launcher-serve.service)"
}

mark boot_done
case "$SCENARIO" in
    stop-auto|stop-daemon) scenario_stop ;;
    serve-restart) scenario_serve ;;
    *) say "unknown scenario $SCENARIO" ;;
esac
fact scenario_status "$?"
collect
mark done
echo ok > "$R/done"
