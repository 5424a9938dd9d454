#!/bin/bash
# One scenario, inside the booted container (nl-scenario.service runs it; installed as
# /opt/nl-test/scenario.sh).  Environment (from /etc/nl-test/env, written by boot.sh):
#     SCENARIO  stop-auto | stop-daemon | serve-restart | cell | latency
#     DETACH    the `[launcher] detach` value to write ("" = write no detach key)
# It writes everything the host checks into /results (a directory bound from the host):
#     records       the handler's own record (support.recorder: start SEQ TIME TYPE NAME STATE PRIORITY, ...)
#     timeline      "NAME EPOCH" marks: keepalived_start, stop_begin, stop_end, settled, ...
#     facts         "key=value": versions, unit properties, pids, what is left running, exit codes
#     launcher.log  /var/log/notify-launcher.log;  journal  the launcher's event journal
#     journal.txt   the container's systemd journal
#     ps-*.txt, cgls-*.txt   process snapshots;  status.json   `notify-launcher status --json`
#     scenario.log  this script's trace;  done    written last
set -u
R=/results
T=/opt/nl-test
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
# the recorder's sleeps file: one `TYPE STATE SECONDS [GATE]` line per argument
recorder_sleeps() { printf '%s\n' "$@" > /etc/nl-test/sleeps; }
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
    cp /run/notify-launcher/journal "$R/journal" 2>/dev/null
    "$NL" status --json > "$R/status.json" 2>&1
    journalctl -b --no-pager -o short-precise > "$R/journal.txt" 2>&1
    systemctl cat keepalived.service > "$R/keepalived.service.txt" 2>&1
    # empty when Debian's packaged files (the unit among them) are unchanged
    fact keepalived_package_modified "$(dpkg -V keepalived | grep -c /lib/systemd/)"
    fact keepalived_killmode "$(systemctl show -P KillMode keepalived.service)"
    fact keepalived_active "$(systemctl is-active keepalived.service)"
    # the workers' transient units make their actions' cgroups below their own: delegated to them
    fact worker_units_delegate "$(systemctl list-units --plain --no-legend 'notify-launcher-worker-*' |
        while read -r unit _; do systemctl show -P Delegate "$unit"; done | sort -u | tr '\n' ' ')"
    systemctl list-units --all --no-pager 'notify-launcher*' > "$R/units.txt" 2>&1
    systemctl status --all --no-pager --lines=20 'notify-launcher*' >> "$R/units.txt" 2>&1
    snapshot end
}

# What this cell is: versions of the system and of what runs the launcher.
versions() {
    local python
    python=$(sed -n '1s/^#!//p' "$NL")  # the console script's interpreter: the venv's, or /usr/bin/python3
    fact debian_version "$(cat /etc/debian_version)"
    fact systemd_version "$(systemctl --version | head -1)"
    fact keepalived_version "$(keepalived -v 2>&1 | head -1)"
    fact keepalived_package "$(dpkg-query -W -f '${Version}' keepalived)"
    fact cgroup_fs "$(stat -f -c %T /sys/fs/cgroup)"
    fact launcher_version "$("$NL" --version 2>&1)"
    fact python_version "$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>&1)"
    fact python_deps "$("$python" -c 'from importlib.metadata import version as v
print(" ".join(d + "=" + v(d) for d in ("python-daemon", "filelock", "psutil")))' 2>&1)"
    fact utc_offset "$(date +%z)"  # the launcher log's times are local
}

# keepalived's VRRP interface: a veth pair (the kernel has no dummy interfaces), private to the
# container's network namespace.
network() {
    ip link add vrrp0 type veth peer name vrrp1
    ip link set vrrp1 up
    ip link set vrrp0 up
    ip addr add 192.168.77.1/24 dev vrrp0
    mkdir -p /run/keepalived /etc/keepalived
}

# keepalived.conf from keepalived-$1.conf (this cell's launcher path in it), the scenarios' INI
configure() {
    sed "s#@LAUNCHER@#$NL#" "$T/keepalived-$1.conf" > /etc/keepalived/keepalived.conf
    {
        echo "[launcher]"
        echo "handler = $T/handler.sh"
        echo "timeout = 60"
        echo "log_level = DEBUG"
        [ -n "${DETACH:-}" ] && echo "detach = $DETACH"
    } > /etc/keepalived/notify-launcher.ini
    cp /etc/keepalived/notify-launcher.ini "$R/notify-launcher.ini"
}

setup() {
    say "scenario $SCENARIO, detach=${DETACH:-<no key>}, install $INSTALL ($NL)"
    versions
    network
    configure "$1"
}

# (a) and (b): keepalived runs the launcher as notify_fifo_script; `systemctl stop keepalived`
# while the MASTER action (10 s) runs (the STOP action takes 3 s).  Then wait until MASTER and STOP actions ended, or until
# nothing is left that could end them (and the MASTER action is well past its 10 s).
scenario_stop() {
    setup script
    recorder_sleeps "* MASTER 10" "* STOP 3"  # only the MASTER action must outlast the stop
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
    recorder_sleeps "* MASTER 3" "* STOP 3"
    sed "s#@LAUNCHER@#$NL#" "$T/notify-launcher-serve.service" > /etc/systemd/system/notify-launcher-serve.service
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

# --- cell: what a matrix cell proves (tests/test_matrix.py) -------------------------------------

# The example configuration as a user installs it: keepalived.conf.example with only the interface
# (vrrp0 here) and the launcher's path (this cell's) adapted; the INI the .deb installed (a
# conffile), or for the venv the checkout's example INI.
cell_example() {
    local conf=/etc/keepalived/keepalived.conf ini=/etc/keepalived/notify-launcher.ini
    [ "$INSTALL" = deb ] || cp "$T/example/notify-launcher.ini" "$ini"
    sed -e "s#^\([[:space:]]*interface[[:space:]]\+\)[^[:space:]]\+#\1vrrp0#" \
        -e "s#^\([[:space:]]*notify_fifo_script[[:space:]]\+\"\)[^[:space:]\"]\+#\1$NL#" \
        "$T/example/keepalived.conf" > "$conf"
    cp "$conf" "$R/example.conf"
    cp "$ini" "$R/example.ini" || say "no INI at $ini"
    keepalived -t -f "$conf" > "$R/keepalived-t.txt" 2>&1
    fact example_keepalived_t "$?"
    "$NL" check-config --config "$ini" --keepalived-conf "$conf" > "$R/check-config.txt" 2>&1
    fact example_check_config "$?"
}

# keepalived.conf of the reload: the same with BURST more instances (VI_2...), which start at once
burst_conf() {
    local i
    sed "s#@LAUNCHER@#$NL#" "$T/keepalived-script.conf"
    for i in $(seq 2 $((BURST + 1))); do
        printf 'vrrp_instance VI_%s {\n    state BACKUP\n    interface vrrp0\n    virtual_router_id %s\n' \
            "$i" $((50 + i))
        printf '    priority 150\n    advert_int 0.1\n    virtual_ipaddress {\n        192.168.77.%s/24\n    }\n}\n' \
            $((100 + i))
    done
}

count_logged() { grep -c -F "$1" /var/log/notify-launcher.log 2>/dev/null; }
more_logged() { [ "$(count_logged "$1")" -gt "$2" ]; }
# all BURST new instances' MASTER lines journaled
burst_in() { [ "$(grep -c -E '#[0-9]+ INSTANCE "VI_([2-9]|[1-9][0-9]+)" MASTER [0-9]+ \| received' \
    /var/log/notify-launcher.log)" -ge "$BURST" ]; }
# the stop phase is over: MASTER and STOP actions ended, or nothing is left that could end them
stop_over() {
    local stop_seq
    stop_seq=$(started STOP 1 | cut -d' ' -f1)
    { ended "$1" && [ -n "$stop_seq" ] && ended "$stop_seq"; } || [ "$(survivors | wc -l)" = 0 ]
}

scenario_cell() {
    local gate master mseq mtime readers exits
    say "scenario cell: install $INSTALL ($NL), burst $BURST"
    versions
    "$NL" --version > /dev/null 2>&1 || { say "the launcher does not run here (see the fact launcher_version)"; return 1; }
    network
    cell_example

    # 1. `systemctl stop keepalived` while the MASTER action runs: it waits at a gate that opens
    # only after the stop returned, so it is alive through the whole stop.
    configure script
    gate=/run/nl-test-gate-stop
    recorder_sleeps "* MASTER 0 $gate" "* STOP 2"
    mark keepalived_start
    systemctl start keepalived.service || say "systemctl start keepalived failed"
    master=$(wait_started MASTER 1 120) || { say "no MASTER action within 120 s"; return 1; }
    read -r mseq mtime <<< "$master"
    fact master_seq "$mseq"
    snapshot before-stop
    mark stop_begin
    systemctl stop keepalived.service
    mark stop_end
    touch "$gate"
    snapshot after-stop
    fact survivors_after_stop "$(survivors | wc -l)"
    wait_until 120 stop_over "$mseq" || say "MASTER/STOP actions not over within 120 s"
    mark stop_settled

    # 2. keepalived again; `systemctl reload` while its MASTER action waits at a gate, into a
    # configuration with BURST more instances: a new reader carries the numbering on, and the
    # burst of 2 x BURST lines queues behind the running action; the gate opens once all are in.
    gate=/run/nl-test-gate-reload
    recorder_sleeps "* MASTER 0 $gate"
    systemctl start keepalived.service || say "systemctl start keepalived (again) failed"
    wait_started MASTER 2 120 > /dev/null || { say "no second MASTER action within 120 s"; return 1; }
    readers=$(count_logged "| reader started")
    exits=$(count_logged "| reader exiting")
    burst_conf > /etc/keepalived/keepalived.conf
    mark reload_begin
    systemctl reload keepalived.service || say "systemctl reload keepalived failed"
    mark reload_end
    wait_until 120 more_logged "| reader started" "$readers" || say "no new reader within 120 s"
    wait_until 120 more_logged "| reader exiting" "$exits" || say "the old reader did not exit within 120 s"
    wait_until 120 burst_in || say "the burst's MASTER lines were not all journaled within 120 s"
    mark burst_in
    touch "$gate"
    "$NL" wait --timeout 120 || say "launcher not idle 120 s after the burst"
    mark settled
    recorder_sleeps  # the poweroff's STOP actions (after `settled`) run at once
}

# --- latency: event -> action start under systemd, launcher beside the shell reader ----------------
# (benchmarks/systemd_states.py reads the result).  Lines go straight into keepalived's FIFO as
# keepalived writes them (one write per line); the wall time just before each write goes to
# /results/writes ("write PHASE I EPOCH"); the handler records its start ($EPOCHREALTIME).  Phases:
#   direct          the handler spawned directly (python3 subprocess, as benchmarks/run.py does)
#   alive           the launcher, default settings (detach auto: systemd units), its standby up
#   past-linger     the launcher with linger = 1, each line after 2 s idle
#   shell-alive     benchmarks/baseline-reader.sh as notify_fifo_script, lines as in `alive`
#   shell-idle      the same, lines as in `past-linger`
LAT_FIFO=/run/keepalived/notify.fifo

latency_ini() {
    {
        echo "[launcher]"
        echo "handler = $T/handler.sh"
        echo "timeout = 60"
        [ -n "$1" ] && echo "linger = $1"
        [ -n "${DETACH:-}" ] && echo "detach = $DETACH"
    } > /etc/keepalived/notify-launcher.ini
    cp /etc/keepalived/notify-launcher.ini "$R/notify-launcher-$2.ini"
}

# the phase's lines: N lines, GAP seconds before each
latency_feed() {
    local phase=$1 n=$2 gap=$3 i t line states=(BACKUP MASTER)
    fact "loadavg_$phase" "$(cut -d' ' -f1-3 /proc/loadavg)"
    exec 7> "$LAT_FIFO"
    for ((i = 1; i <= n; i++)); do
        sleep "$gap"
        line="INSTANCE \"LAT_$phase\" ${states[i % 2]} $i"
        t=$EPOCHREALTIME
        printf '%s\n' "$line" >&7
        echo "write $phase $i $t" >> "$R/writes"
    done
    exec 7>&-
    wait_until 60 latency_ran "$phase" "$n" || say "phase $phase: not all $n actions started within 60 s"
}
latency_ran() { [ "$(grep -c "^start .* INSTANCE \"\?LAT_$1\"\? " "$R/records")" -ge "$2" ]; }

# the handler spawned directly, lines FIRST..LAST, GAP seconds before each
latency_direct() {
    fact "loadavg_direct$1" "$(cut -d' ' -f1-3 /proc/loadavg)"
    python3 - "$T/handler.sh" "$1" "$2" "$3" "$R/writes" <<'EOF'
import subprocess, sys, time
handler, first, last, gap, writes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
for i in range(first, last + 1):
    time.sleep(gap)
    t = time.time()
    subprocess.Popen([handler, "INSTANCE", "LAT_direct", ("BACKUP", "MASTER")[i % 2], str(i)]).wait()
    with open(writes, "a") as fh:
        fh.write(f"write direct {i} {t:.6f}\n")
EOF
}

vi1_masters() { grep -c "^start .* INSTANCE \"\?VI_1\"\? MASTER" "$R/records"; }
more_masters() { [ "$(vi1_masters)" -gt "$1" ]; }
standby_unit() { systemctl list-units --no-legend --plain --state=active 'notify-launcher-worker-*' | grep -q .; }

# (re)start keepalived with its configuration as is; settled: VI_1's MASTER action ran, and for
# the launcher ($1 = launcher) it is idle with its standby unit up
latency_start() {
    local masters
    masters=$(vi1_masters)
    mark "start_$2"
    systemctl restart keepalived.service || say "systemctl restart keepalived failed"
    wait_until 60 more_masters "$masters" || say "$2: no VI_1 MASTER action within 60 s"
    if [ "$1" = launcher ]; then
        "$NL" wait --timeout 60 || say "$2: launcher not idle within 60 s"
        wait_until 60 standby_unit || say "$2: no active notify-launcher-worker-* unit within 60 s"
        fact "standby_$2" "$(systemctl list-units --no-legend --plain --state=active 'notify-launcher-worker-*' \
            | awk '{print $1}' | tr '\n' ' ')"
    fi
    sleep 1  # let keepalived's and the reader's start-up work pass
    mark "settled_$2"
}

latency_launcher_phase() {
    local before
    before=$(count_logged "worker started")
    latency_feed "$@"
    "$NL" wait --timeout 60 || say "$1: launcher not idle within 60 s"
    fact "workers_started_during_$1" $(($(count_logged "worker started") - before))
}

scenario_latency() {
    local n=${LAT_EVENTS:-20} m=${LAT_IDLE_EVENTS:-6} conf=/etc/keepalived/keepalived.conf
    setup script
    touch "$R/records"
    # launcher, shell, shell, launcher (and the direct spawn at both ends): a load that drifts
    # during the run weighs on both sides alike
    latency_direct 1 $((n / 2)) 0.3
    latency_ini "" alive
    latency_start launcher alive
    fact detach_logged "$(grep -o 'detached: [a-z]* [a-z]*' /var/log/notify-launcher.log | sort | uniq -c | tr '\n' ';')"
    latency_launcher_phase alive "$n" 0.3

    cp "$conf" "$R/keepalived-launcher.conf"
    sed -i "s#$NL --config /etc/keepalived/notify-launcher.ini#$T/baseline-reader.sh /run/nl-test-lock $T/handler.sh#" \
        "$conf"
    cp "$conf" "$R/keepalived-shell.conf"
    latency_start shell shell-alive
    latency_feed shell-alive "$n" 0.3
    latency_feed shell-idle "$m" 2

    cp "$R/keepalived-launcher.conf" "$conf"
    latency_ini 1 past-linger
    latency_start launcher past-linger
    latency_launcher_phase past-linger "$m" 2
    latency_direct $((n / 2 + 1)) "$n" 0.3
    cp /run/notify-launcher/progress "$R/progress"  # the worker's start records: where the time went
    mark settled
}

mark boot_done
case "$SCENARIO" in
    stop-auto|stop-daemon) scenario_stop ;;
    serve-restart) scenario_serve ;;
    cell) scenario_cell ;;
    latency) scenario_latency ;;
    *) say "unknown scenario $SCENARIO" ;;
esac
fact scenario_status "$?"
collect
mark done
echo ok > "$R/done"
