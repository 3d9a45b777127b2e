# Scenario: benchmark: the same line through Debian's usbmuxd and over the station's own USB transport; a large GetValue on each
# Run by scripts/usb-vm-bench (not by the suite: slow). $UDCS gadget phones, all erased and
# clean; each transport gets a freshly started gadget bench (so every phone has the same
# work to do) and is measured on:
#   - `station run --once`: wall time, and the station's CPU time (user + system);
#   - `station info --domain com.apple.disk_usage --key NANDInfo` of a phone whose value is
#     $NAND bytes, against the same command for a small key of that domain: the difference
#     of their wall times is the time the large answer took, its size over that the bytes
#     per second (REPS runs of each, the medians).
# Figures go to $RESULTS/figures.txt, one `BENCH key=value ...` line per transport.
. /usb-vm/lib.sh

N="$UDCS"
NAND=2097152
REPS=3
load_usb_modules "$N"
# The phones are plugged in one after another, PLUG_STEP_MS apart (the world's plug_at_ms), as
# an operator fills a line: Debian's usbmuxd 1.1.1 cannot take 16 phones that are there at
# once. On start it sets up every phone in its single-threaded main loop before it accepts a
# client; meanwhile each phone's preflight thread connects to usbmuxd's own socket, whose
# listen backlog is 5, and libimobiledevice-glue's socket_connect_unix connects non-blocking,
# so a full backlog fails at once (EAGAIN): "Could not connect to lockdownd ..., lockdown
# error -8" within milliseconds, no "Client accepted" for those threads, and the phone is
# never announced (seen: 9 of 16). The warm-up world ($1 = warm) has them all at start.
PLUG_STEP_MS=1000
world() {
    echo "seed = 7"
    i=1
    while [ "$i" -le "$N" ]; do
        printf '\n[[device]]\ndevice_name = "bench-%s"\nactivation_state = "Unactivated"\nnand_info_bytes = %s\n' "$i" "$NAND"
        [ "$1" = warm ] || [ "$i" = 1 ] || printf 'plug_at_ms = %s\n' $(((i - 1) * PLUG_STEP_MS))
        i=$((i + 1))
    done
}
world warm >/tmp/world-warm.toml
world staggered >/tmp/world.toml
echo 'serial_number,udid,bypass_code,code_kind,source,retrieved_at' >/tmp/codes.csv
ready_field() { sed -n "s/^ *\"$1\": \"\\(.*\\)\",\$/\\1/p" "$2"; }

STATE=/tmp/sim-state
# Starts the gadget bench ($1: a name for its log) with the phones' keys of the warm-up but
# no pairings, and waits for the N phones on the bus (plugged in one after another).
start_gadgets() {
    rm -f /tmp/ready.json
    rm -rf "$STATE/phones" "$STATE/lockdown"
    # --idle-timeout-ms: the phone's 10 s lockdown idle limit scaled to the emulated host, whose
    # RSA key generation for usbmuxd's pairings can outlast it (see usbmuxd-judges.sh).
    station-sim gadget --world /tmp/world.toml --state-dir "$STATE" --socket "/tmp/sim-$1.sock" \
        --idle-timeout-ms 60000 --ready /tmp/ready.json >"$RESULTS/sim-$1.log" 2>&1 &
    SIM=$!
    wait_for 120 test -s /tmp/ready.json || { show 'sim| ' "$RESULTS/sim-$1.log"; fail "no ready file"; }
    wait_for $((60 + N * PLUG_STEP_MS / 1000)) sh -c "[ \$(grep -l '^05ac\$' /sys/bus/usb/devices/*/idVendor 2>/dev/null | wc -l) -ge $N ]" \
        || fail "the $N gadgets did not enumerate"
    URL="$(ready_field activation_url /tmp/ready.json)"
    FIRST="$(ready_field udid /tmp/ready.json | head -1)"
}
stop_gadgets() {
    kill "$SIM"
    wait_for 60 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop"
}
config() {
    cat <<TOML
[station]
id = "usb-vm-bench"
data_dir = "/tmp/data-$1"
concurrency = $N

[activation]
url = "$URL"

[[codes.sources]]
type = "csv"
path = "/tmp/codes.csv"
TOML
}
# timed FILE COMMAND...: runs COMMAND, appends "wall user sys" (seconds) to FILE.
timed() {
    out="$1"; shift
    rc=0
    time -o /tmp/time.txt -f '%e %U %S' "$@" || rc=$?
    # The last line: before it busybox notes a non-zero exit ("Command exited with ...").
    tail -1 /tmp/time.txt >>"$out"
    return "$rc"
}
# usbmuxd's CPU time so far (user + system, clock ticks; 0 when it is not running): the
# daemon's share of the work on the usbmuxd side.
daemon_ticks() {
    if [ -n "${USBMUXD_PID:-}" ] && [ -r "/proc/$USBMUXD_PID/stat" ]; then
        # The fields after the command name (which may hold spaces): utime is the 12th.
        sed 's/^.*) //' "/proc/$USBMUXD_PID/stat" | awk '{print $12 + $13}'
    else
        echo 0
    fi
}
median() { grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# measure NAME STATION-ARGS...: the line, then the large and the small GetValue.
measure() {
    name="$1"; shift
    step "$name: station run --once ($N phones)"
    : >"/tmp/line-$name.txt"
    daemon_before="$(daemon_ticks)"
    rc=0
    timed "/tmp/line-$name.txt" station "$@" run --once --trust-wait 20 >"$RESULTS/run-$name.ndjson" 2>"$RESULTS/run-$name.log" || rc=$?
    daemon_cpu="$(awk -v a="$daemon_before" -v b="$(daemon_ticks)" -v hz="$(getconf CLK_TCK 2>/dev/null || echo 100)" 'BEGIN {printf "%.2f", (b - a) / hz}')"
    # 1: some phone needs attention. A phone the line could not finish is a figure too (how
    # the transport holds up under load), so it is counted and shown, not fatal.
    [ "$rc" = 0 ] || [ "$rc" = 1 ] || { tail -20 "$RESULTS/run-$name.log"; fail "$name: run --once exited with $rc"; }
    activated="$(grep -c '"event":"finished",.*"outcome":"activated"' "$RESULTS/run-$name.ndjson" || true)"
    [ "$activated" -gt 0 ] || fail "$name: no phone activated"
    grep '"event":"finished"' "$RESULTS/run-$name.ndjson" | grep -v '"outcome":"activated"' \
        | sed -n 's/.*"slot":"\([^"]*\)","outcome":"\([^"]*\)","message":"\([^"]*\)".*/not activated: \1 \2: \3/p' \
        | tee -a "$RESULTS/figures.txt"
    read -r wall user sys <"/tmp/line-$name.txt"
    echo "line: wall $wall s, station CPU user $user s + sys $sys s; usbmuxd's CPU meanwhile $daemon_cpu s"

    step "$name: GetValue NANDInfo ($NAND bytes) vs TotalDiskCapacity, $REPS times each"
    : >"/tmp/large-$name.txt"; : >"/tmp/small-$name.txt"
    r=0
    while [ "$r" -lt "$REPS" ]; do
        timed "/tmp/large-$name.txt" station "$@" info --udid "$FIRST" --domain com.apple.disk_usage --key NANDInfo \
            >/tmp/large.out 2>"$RESULTS/large-$name.log" || { cat "$RESULTS/large-$name.log"; fail "$name: large GetValue failed"; }
        # base64 of NAND bytes and a newline: the whole value arrived.
        [ "$(wc -c </tmp/large.out)" -ge $((NAND * 4 / 3)) ] || fail "$name: the large value came short: $(wc -c </tmp/large.out) bytes of base64"
        timed "/tmp/small-$name.txt" station "$@" info --udid "$FIRST" --domain com.apple.disk_usage --key TotalDiskCapacity \
            >/dev/null 2>"$RESULTS/small-$name.log" || { cat "$RESULTS/small-$name.log"; fail "$name: small GetValue failed"; }
        r=$((r + 1))
    done
    large="$(cut -d' ' -f1 "/tmp/large-$name.txt" | median)"
    small="$(cut -d' ' -f1 "/tmp/small-$name.txt" | median)"
    bps="$(awk -v n="$NAND" -v l="$large" -v s="$small" 'BEGIN {d = l - s; if (d <= 0) print "n/a"; else printf "%.0f", n / d}')"
    echo "GetValue: large $large s, small $small s (medians of $REPS): $bps bytes/s"
    echo "BENCH transport=$name phones=$N activated=$activated line_wall_s=$wall station_user_s=$user station_sys_s=$sys usbmuxd_cpu_s=$daemon_cpu large_getvalue_s=$large small_getvalue_s=$small large_bytes=$NAND bytes_per_s=$bps" \
        | tee -a "$RESULTS/figures.txt"
}

# Warm-up, not measured: a phone makes its RSA key on first use, which under TCG takes
# seconds of the VM's CPU; made here for all phones (on the socket bench, same world and
# state directory) so neither transport's figures carry it.
step "warm-up: the phones' keys"
station-sim serve --world /tmp/world-warm.toml --state-dir "$STATE" --socket /tmp/warm.sock \
    --ready /tmp/warm-ready.json >"$RESULTS/warm.log" 2>&1 &
WARM=$!
wait_for 120 test -s /tmp/warm-ready.json || { show 'warm| ' "$RESULTS/warm.log"; fail "no ready file from serve"; }
for u in $(ready_field udid /tmp/warm-ready.json); do
    timeout 600 station --usbmuxd UNIX:/tmp/warm.sock --data-dir /tmp/warm --timeout 300 \
        info --udid "$u" --key DevicePublicKey >/dev/null 2>>"$RESULTS/warm.log" &
done
wait_for 600 sh -c "[ \$(ls $STATE/keys 2>/dev/null | wc -l) -ge $N ]" || fail "the warm-up made $(ls "$STATE/keys" | wc -l) keys of $N"
kill "$WARM"
wait_for 60 sh -c "! kill -0 $WARM" || fail "station-sim serve did not stop"

start_gadgets usb
config usb >/tmp/usb.toml
measure usb --config /tmp/usb.toml --transport usb --timeout 120
stop_gadgets

# usbmuxd first, so it meets the phones one by one as they are plugged in (hotplug).
mkdir -p /var/lib/lockdown
start_usbmuxd
start_gadgets usbmuxd
config usbmuxd >/tmp/usbmuxd.toml
wait_for 240 sh -c "[ \$(idevice_id -l 2>/dev/null | wc -l) -ge $N ]" \
    || { grep ERROR "$RESULTS/usbmuxd.log" | tail -5; dmesg >"$RESULTS/dmesg.txt"; fail "usbmuxd lists $(idevice_id -l | wc -l) of the $N phones"; }
measure usbmuxd --config /tmp/usbmuxd.toml --usbmuxd /var/run/usbmuxd --timeout 120
stop_usbmuxd
stop_gadgets
cat "$RESULTS/figures.txt"
