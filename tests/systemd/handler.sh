#!/bin/sh
# The notify-launcher handler of the systemd scenarios (installed as /opt/nl-test/handler.sh).
#
# Called as HANDLER TYPE NAME STATE PRIORITY with NL_SEQ in the environment.  It keeps its own
# record in /results/records (the host's view of the run), one fact per line:
#     start SEQ TIME PID TYPE NAME STATE PRIORITY
#     cgroup SEQ /system.slice/....service       the cgroup this action runs in
#     signal SEQ TIME TERM                       it was sent SIGTERM (a SIGKILL leaves no line)
#     end SEQ TIME                               it ran to its end
# TIME is `date +%s.%N`.  The action sleeps as long as /etc/nl-test/sleeps says for its STATE
# (lines "STATE SECONDS").  `sleep & wait` lets the TERM trap run at once.
rec=/results/records
echo "start $NL_SEQ $(date +%s.%N) $$ $*" >> "$rec"
echo "cgroup $NL_SEQ $(grep '^0::' /proc/self/cgroup | cut -d: -f3-)" >> "$rec"
trap 'echo "signal $NL_SEQ $(date +%s.%N) TERM" >> "$rec"; exit 143' TERM
secs=$(awk -v s="$3" '$1 == s { print $2; exit }' /etc/nl-test/sleeps 2>/dev/null)
if [ -n "$secs" ]; then
    sleep "$secs" &
    wait $!
fi
echo "end $NL_SEQ $(date +%s.%N)" >> "$rec"
echo "handler: $* done"
