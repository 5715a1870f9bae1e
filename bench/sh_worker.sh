#!/bin/sh
# A bench child without an interpreter start-up: appends the same start/stop JSON lines
# as examples/worker.py to $WORK_RECORD (supervisor_bench.py --child sh), then waits.
# SIGTERM to the group ends the sleep; the trap records "stop" and exits 0.
rec() {
    printf '{"event":"%s","pid":%d,"t":%s,"role":"%s","member_id":"%s","index":"%s","count":"%s","epoch":"%s"}\n' \
        "$1" "$$" "$(date +%s.%N)" "$ROLE" "$MEMBER_ID" "$INDEX" "$COUNT" "$EPOCH" >> "$WORK_RECORD"
}
trap 'rec stop; exit 0' TERM INT
rec start
echo "working as INDEX=$INDEX COUNT=$COUNT"
sleep 1000000 &
wait $!
