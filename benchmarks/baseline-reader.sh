#!/bin/bash
# The baseline: the notify_fifo_script administrators write by hand (cf. keepalived's
# doc/samples/sample_notify_fifo.sh), reduced to its core:
#
#     while read line; do setsid flock LOCK HANDLER $line & done < FIFO
#
# Usage (keepalived appends the FIFO as the LAST argument):
#     baseline-reader.sh LOCKFILE HANDLER FIFO
#
# Each line becomes one detached job (setsid: it survives keepalived's TERM/KILL of our process
# group) that waits on LOCKFILE (flock serializes the actions) and then runs HANDLER with the
# line's words as arguments (word-split, quotes kept: NAME arrives as "VI_1" with its quotes).
#
# SIGTERM, as in the upstream sample: keepalived sends TERM *before* it writes the STOP lines, so
# the TERM trap does not exit at once; it keeps reading for 0.5 s and leaves on SIGALRM (exit
# well before keepalived's SIGKILL at +1 s).
lock=$1
handler=$2
fifo=${!#}

start_shutdown() {
    ( sleep 0.5; kill -ALRM $$ ) &
}
trap 'exit 0' ALRM
trap start_shutdown TERM

while :; do
    [[ -p $fifo ]] || exit 1
    while read line; do
        setsid flock "$lock" "$handler" $line &
    done < "$fifo"
done
