# Scenario: `station --transport usb` without usbmuxd: devices with slots from port paths, info, the mode query, `run --once` as on the socket bench with an unplug and replug from the world's plug schedule; a clear error while usbmuxd holds the phones
# The station's own USB transport (nusb) on 4 gadget phones through the kernel's USB stack:
# `devices` lists them with the `[slots]` labels of the port paths the transport opened them
# at (sysfs' serial search is switched off, so the labels can only come from the bus), each
# phone answers the §2.2 mode query as a phone in the initial mode, `info` reads the lockdown
# dump (pair records in the data directory), `run --once` ends every phone as the same run
# on the socket bench does; a phone whose world pulls it out mid-activation (its gadget
# unbound from its UDC by the world's `plug_periods`) ends `interrupted` and, bound again by
# the schedule, is activated; then, with Debian's usbmuxd holding the phones, `devices` says
# so and exits non-zero (issue 11, "Done when").
. /usb-vm/lib.sh

CODE="3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"
# The line's mix (tests/tests/station_line.rs). world [CLEAN-LINES]: the world, with
# CLEAN-LINES added to the first (clean) phone; the same seed and phones give the same UDIDs.
world() {
    cat <<TOML
seed = 11

[[device]]
device_name = "clean"
activation_state = "Unactivated"
${1:-activation_info_delay_ms = 4000}

[[device]]
device_name = "mdm"
activation_state = "Unactivated"
lock = "mdm"
codes = ["$CODE"]

[[device]]
device_name = "user-locked"
activation_state = "Unactivated"
lock = "user"

[[device]]
device_name = "activated"
activation_state = "Activated"
TOML
}
world >/tmp/world.toml
# For the run with an unplug: the clean phone's activation_info takes 20 s on the phone and
# its world pulls it out at 15 s (the bench's clock) and puts it back at 17 s. The run starts
# a few seconds after the bench and reaches that step about 1 s later (under TCG on a busy
# host, up to some 10 s), so the unplug lands in it with room either side.
world "activation_info_delay_ms = 20000
plug_periods = [{ unplug_at_ms = 15000 }, { plug_at_ms = 17000 }]" >/tmp/replug-world.toml

# station.toml for a bench: $1 data directory, $2 activation URL, $3 extra lines.
station_config() {
    cat <<TOML
[station]
id = "usb-vm"
data_dir = "$1"
concurrency = 4

[activation]
url = "$2"

[retry]
attempts = 3
initial_backoff_ms = 100
max_backoff_ms = 400

[[codes.sources]]
type = "csv"
path = "/tmp/codes.csv"

[slots]
"1-1" = "A1"
"2-1" = "A2"
"3-1" = "A3"
"4-1" = "A4"
$3
TOML
}
ready_field() { sed -n "s/^ *\"$1\": \"\\(.*\\)\",\$/\\1/p" "$2"; }
# "UDID OUTCOME" of every `finished` event of a run's NDJSON, in order.
finished() {
    sed -n 's/.*"event":"finished","udid":"\([^"]*\)","slot":"[^"]*","outcome":"\([^"]*\)".*/\1 \2/p' "$1"
}
# The last outcome of each phone, sorted by UDID.
final_outcomes() { finished "$1" | awk '{last[$1] = $2} END {for (u in last) print u, last[u]}' | sort; }

step "the same world on the socket bench (station-sim serve), for the outcomes to compare"
station-sim serve --world /tmp/world.toml --socket /tmp/sim.sock --state-dir /tmp/sim-state \
    --ready /tmp/serve-ready.json >"$RESULTS/serve.log" 2>&1 &
SERVE=$!
wait_for 60 test -s /tmp/serve-ready.json || { show 'serve| ' "$RESULTS/serve.log"; fail "no ready file from serve"; }
mdm_serial="$(ready_field serial /tmp/serve-ready.json | sed -n 2p)"
socket_udids="$(ready_field udid /tmp/serve-ready.json | sort)"
printf 'serial_number,udid,bypass_code,code_kind,source,retrieved_at\n%s,,%s,device,intune,2026-11-01T10:00:00Z\n' \
    "$mdm_serial" "$CODE" >/tmp/codes.csv
station_config /tmp/socket-data "$(ready_field activation_url /tmp/serve-ready.json)" \
    "[usbmuxd]
address = \"UNIX:/tmp/sim.sock\"" >/tmp/socket.toml
rc=0
timeout 180 station --config /tmp/socket.toml run --once --trust-wait 20 \
    >"$RESULTS/socket-run.ndjson" 2>"$RESULTS/socket-run.log" || rc=$?
final_outcomes "$RESULTS/socket-run.ndjson" | tee "$RESULTS/socket-outcomes.txt"
[ "$rc" = 1 ] || { cat "$RESULTS/socket-run.log"; fail "the socket bench's run exited with $rc, not 1 (the user-locked phone needs attention)"; }
kill "$SERVE"
wait_for 20 sh -c "! kill -0 $SERVE" || fail "station-sim serve did not stop on SIGTERM"

step "station-sim gadget --world (the same 4 phones)"
load_usb_modules 4
station-sim gadget --world /tmp/world.toml --state-dir /tmp/gadget-state --ready "$RESULTS/ready.json" >"$RESULTS/sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/ready.json" || { show 'sim| ' "$RESULTS/sim.log"; fail "no ready file"; }
udids="$(ready_field udid "$RESULTS/ready.json" | sort)"
clean="$(ready_field udid "$RESULTS/ready.json" | sed -n 1p)"
[ "$socket_udids" = "$udids" ] || fail "the two benches have other UDIDs"
wait_for 30 sh -c "[ \$(grep -l '^05ac\$' /sys/bus/usb/devices/*/idVendor 2>/dev/null | wc -l) -ge 4 ]" \
    || fail "the gadgets did not enumerate"
station_config /tmp/station "$(ready_field activation_url "$RESULTS/ready.json")" "" >/tmp/usb.toml
# No sysfs search by serial: a slot can only come from the port the transport opened.
station_usb() {
    STATION_SYSFS_ROOT=/nonexistent timeout 180 station --config /tmp/usb.toml --transport usb --timeout 60 "$@"
}

step "station --transport usb -v devices (no usbmuxd)"
rc=0
station_usb -v devices >"$RESULTS/devices.txt" 2>"$RESULTS/devices.log" || rc=$?
cat "$RESULTS/devices.txt"
[ "$rc" = 0 ] || { cat "$RESULTS/devices.log"; show 'sim| ' "$RESULTS/sim.log"; fail "station devices exited with $rc"; }
for u in $udids; do
    row="$(awk -v u="$u" '$1 == u {print $(NF-1), $NF}' "$RESULTS/devices.txt")"
    port="${row% *}"; slot="${row#* }"
    echo "$u: port $port, slot $slot"
    case "$port" in [1-4]-1) ;; *) fail "$u: port path '$port', expected N-1" ;; esac
    [ "$slot" = "A${port%-1}" ] || fail "$u on port $port has slot '$slot', not [slots]' A${port%-1}"
done
[ "$(awk '$NF ~ /^A[1-4]$/' "$RESULTS/devices.txt" | wc -l)" = 4 ] || fail "not 4 phones with slots A1-A4"
# §2.2: each phone answered the mode query as a phone in the initial mode.
grep 'USB mode query' "$RESULTS/devices.log" || true
[ "$(grep -c 'USB mode query answered.*3:3:3:0 (initial mode)' "$RESULTS/devices.log")" = 4 ] \
    || { cat "$RESULTS/devices.log"; fail "not every phone answered the mode query with 3:3:3:0"; }

step "station --transport usb info --udid $clean"
rc=0
station_usb info --udid "$clean" >"$RESULTS/info.txt" 2>"$RESULTS/info.log" || rc=$?
head -15 "$RESULTS/info.txt"; echo "... ($(wc -l <"$RESULTS/info.txt") lines)"
[ "$rc" = 0 ] || { cat "$RESULTS/info.log"; show 'sim| ' "$RESULTS/sim.log"; fail "station info exited with $rc"; }
grep -q "$clean" "$RESULTS/info.txt" || fail "station info does not show the UDID"
grep -q 'ProductType' "$RESULTS/info.txt" || fail "station info shows no ProductType"

step "station --transport usb run --once on a gadget bench whose world pulls $clean out at 15 s and back at 17 s"
# The same phones (and state directory: keys, pairings) with the replug world.
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
station-sim gadget --world /tmp/replug-world.toml --state-dir /tmp/gadget-state \
    --ready "$RESULTS/replug-ready.json" >"$RESULTS/replug-sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/replug-ready.json" || { show 'sim| ' "$RESULTS/replug-sim.log"; fail "no ready file"; }
[ "$(ready_field udid "$RESULTS/replug-ready.json" | sort)" = "$udids" ] || fail "the replug world has other UDIDs"
grep -q '"plug_periods"' "$RESULTS/replug-ready.json" || fail "the ready file does not show the plug periods"
# This bench's stand-in activation server listens on a port of its own.
station_config /tmp/station "$(ready_field activation_url "$RESULTS/replug-ready.json")" "" >/tmp/usb.toml
wait_for 30 sh -c "[ \$(grep -l '^05ac\$' /sys/bus/usb/devices/*/idVendor 2>/dev/null | wc -l) -ge 4 ]" \
    || fail "the gadgets did not enumerate"
station_usb run --once --trust-wait 20 --replug-grace 60 >"$RESULTS/usb-run.ndjson" 2>"$RESULTS/usb-run.log" &
RUN=$!
rc=0
wait "$RUN" || rc=$?
finished "$RESULTS/usb-run.ndjson" | sed 's/^/finished: /'
final_outcomes "$RESULTS/usb-run.ndjson" | tee "$RESULTS/usb-outcomes.txt"
[ "$rc" = 1 ] || { tail -40 "$RESULTS/usb-run.log"; fail "the usb run exited with $rc, not 1 (the user-locked phone needs attention)"; }
[ "$(finished "$RESULTS/usb-run.ndjson" | grep "^$clean " | cut -d' ' -f2 | tr '\n' ' ')" = "interrupted activated " ] \
    || fail "$clean did not end interrupted, then activated"
grep -q "\"event\":\"detached\",\"udid\":\"$clean\"" "$RESULTS/usb-run.ndjson" || fail "no detached event for $clean"
echo "$clean was interrupted at: $(grep "\"event\":\"finished\",\"udid\":\"$clean\",.*\"outcome\":\"interrupted\"" "$RESULTS/usb-run.ndjson" | sed -n 's/.*"step":"\([^"]*\)".*/\1/p')"
# The world's schedule, not this script, unbound the gadget and bound it again.
grep -E "gadget (bound|unbound) udid=$clean" "$RESULTS/replug-sim.log" | sed 's/^/sim| /'
[ "$(grep -E "gadget (bound|unbound) udid=$clean" "$RESULTS/replug-sim.log" | sed 's/.*gadget \([a-z]*\) .*/\1/' | tr '\n' ' ')" = "bound unbound bound " ] \
    || fail "the sim did not bind, unbind and bind $clean's gadget as its world says"
# Attached twice, with a new LocationID (a new USB address) the second time.
locations="$(sed -n "s/.*\"event\":\"attached\",\"udid\":\"$clean\",.*\"location_id\":\([0-9]*\).*/\1/p" "$RESULTS/usb-run.ndjson" | tr '\n' ' ')"
echo "$clean attached at LocationIDs: $locations"
set -- $locations
[ $# = 2 ] && [ "$1" != "$2" ] || fail "$clean was not attached twice at two LocationIDs"
# Every event of a phone carries its port's label, before and after the replug.
slots="$(grep "\"udid\":\"$clean\"" "$RESULTS/usb-run.ndjson" | sed -n 's/.*"slot":"\([^"]*\)".*/\1/p' | sort -u)"
echo "$clean's slot in the run: $slots"
case "$slots" in A[1-4]) ;; *) fail "$clean's events carry the slots '$slots', not one label A1-A4" ;; esac
diff "$RESULTS/socket-outcomes.txt" "$RESULTS/usb-outcomes.txt" || fail "the usb run ended the phones otherwise than the socket bench"
for want in "activated" "already_activated" "user_locked"; do
    grep -q " $want\$" "$RESULTS/usb-outcomes.txt" || fail "no phone ended $want"
done
[ "$(grep -c ' activated$' "$RESULTS/usb-outcomes.txt")" = 2 ] || fail "not 2 phones activated"

step "usbmuxd holds the phones: station --transport usb devices must say so"
mkdir -p /var/lib/lockdown
start_usbmuxd
wait_for 90 sh -c "[ \$(idevice_id -l 2>/dev/null | wc -l) -ge 4 ]" || fail "usbmuxd did not take the phones"
rc=0
station_usb devices >"$RESULTS/busy.txt" 2>&1 || rc=$?
cat "$RESULTS/busy.txt"
[ "$rc" != 0 ] || fail "station --transport usb devices succeeded while usbmuxd holds the phones"
grep -qi 'usbmuxd' "$RESULTS/busy.txt" || fail "the message does not name usbmuxd as the holder"

stop_usbmuxd
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
echo "station-direct-usb: ok"
