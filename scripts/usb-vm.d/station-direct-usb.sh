# Scenario: `station --transport usb` without usbmuxd: devices with slots, info; a clear error while usbmuxd holds the phones
# The station's own USB transport (nusb) on 4 gadget phones through the kernel's USB stack:
# `devices` lists them with their port paths, `info` reads the lockdown dump (pairing with
# pair records in its data directory); then, with Debian's usbmuxd holding the phones,
# `devices` says so and exits non-zero (issue 11, "Done when").
. /usb-vm/lib.sh

load_usb_modules "$UDCS"
station-sim gadget --devices "$UDCS" --ready "$RESULTS/ready.json" >"$RESULTS/sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/ready.json" || { show 'sim| ' "$RESULTS/sim.log"; fail "no ready file"; }
udids="$(sed -n 's/^ *"udid": "\(.*\)",$/\1/p' "$RESULTS/ready.json" | sort)"
wait_for 30 sh -c "[ \$(grep -l '^05ac\$' /sys/bus/usb/devices/*/idVendor 2>/dev/null | wc -l) -ge $UDCS ]" \
    || fail "the gadgets did not enumerate"
station_usb() { timeout 180 station --transport usb --data-dir /tmp/station --timeout 60 "$@"; }

step "station --transport usb devices (no usbmuxd)"
rc=0
station_usb devices >"$RESULTS/devices.txt" 2>"$RESULTS/devices.log" || rc=$?
cat "$RESULTS/devices.txt"
[ "$rc" = 0 ] || { cat "$RESULTS/devices.log"; show 'sim| ' "$RESULTS/sim.log"; fail "station devices exited with $rc"; }
for u in $udids; do grep -q "$u" "$RESULTS/devices.txt" || fail "station devices does not list $u"; done
for port in $(seq 1 "$UDCS"); do
    grep -q " $port-1 " "$RESULTS/devices.txt" || fail "no phone on port path $port-1"
done

first="$(echo "$udids" | head -1)"
step "station --transport usb info --udid $first"
rc=0
station_usb info --udid "$first" >"$RESULTS/info.txt" 2>"$RESULTS/info.log" || rc=$?
head -15 "$RESULTS/info.txt"; echo "... ($(wc -l <"$RESULTS/info.txt") lines)"
[ "$rc" = 0 ] || { cat "$RESULTS/info.log"; show 'sim| ' "$RESULTS/sim.log"; fail "station info exited with $rc"; }
grep -q "$first" "$RESULTS/info.txt" || fail "station info does not show the UDID"
grep -q 'ProductType' "$RESULTS/info.txt" || fail "station info shows no ProductType"

step "usbmuxd holds the phones: station --transport usb devices must say so"
mkdir -p /var/lib/lockdown
start_usbmuxd
wait_for 90 sh -c "[ \$(idevice_id -l 2>/dev/null | wc -l) -ge $UDCS ]" || fail "usbmuxd did not take the phones"
rc=0
station_usb devices >"$RESULTS/busy.txt" 2>&1 || rc=$?
cat "$RESULTS/busy.txt"
[ "$rc" != 0 ] || fail "station --transport usb devices succeeded while usbmuxd holds the phones"
grep -qi 'usbmuxd' "$RESULTS/busy.txt" || fail "the message does not name usbmuxd as the holder"

stop_usbmuxd
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
echo "station-direct-usb: ok"
