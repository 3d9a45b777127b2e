# Scenario: `station activate` through the real usbmuxd releases a locked gadget phone with its code
# A gadget phone Activation Locked by its MDM, and a clean one; the station reaches them
# only through Debian's usbmuxd and the kernel's USB stack, the stand-in activation server
# runs on the VM's loopback (issue 11, "Done when").
. /usb-vm/lib.sh

load_usb_modules 2
CODE="3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4"
cat >/tmp/world.toml <<TOML
seed = 11

[[device]]
device_name = "locked"
activation_state = "Unactivated"
lock = "mdm"
codes = ["$CODE"]

[[device]]
device_name = "clean"
activation_state = "Unactivated"
TOML

step "station-sim gadget --world (one MDM-locked phone, one clean)"
station-sim gadget --world /tmp/world.toml --ready "$RESULTS/ready.json" >"$RESULTS/sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/ready.json" || { show 'sim| ' "$RESULTS/sim.log"; fail "no ready file"; }
url="$(sed -n 's/^ *"activation_url": "\(.*\)",$/\1/p' "$RESULTS/ready.json")"
udids="$(sed -n 's/^ *"udid": "\(.*\)",$/\1/p' "$RESULTS/ready.json")"
serials="$(sed -n 's/^ *"serial": "\(.*\)",$/\1/p' "$RESULTS/ready.json")"
locked="$(echo "$udids" | sed -n 1p)"; locked_serial="$(echo "$serials" | sed -n 1p)"
clean="$(echo "$udids" | sed -n 2p)"
echo "activation server: $url; locked: $locked ($locked_serial); clean: $clean"
printf 'serial_number,udid,bypass_code,code_kind,source,retrieved_at\n%s,,%s,device,intune,2026-11-01T10:00:00Z\n' \
    "$locked_serial" "$CODE" >/tmp/codes.csv

mkdir -p /var/lib/lockdown
start_usbmuxd
wait_for 90 sh -c "[ \$(idevice_id -l 2>/dev/null | wc -l) -ge 2 ]" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; fail "usbmuxd does not list the 2 phones"; }

step "station devices (through /var/run/usbmuxd)"
timeout 120 station --usbmuxd /var/run/usbmuxd --timeout 60 devices 2>&1 | tee "$RESULTS/devices.txt"
grep -q "$locked" "$RESULTS/devices.txt" && grep -q "$clean" "$RESULTS/devices.txt" \
    || fail "station devices does not list both phones"

activate() {
    timeout 240 station --json --usbmuxd /var/run/usbmuxd --timeout 60 --data-dir /tmp/station \
        activate --udid "$1" --activation-url "$url" --codes /tmp/codes.csv
}
step "station activate --udid $locked (MDM-locked; its code is in the CSV)"
rc=0
activate "$locked" >"$RESULTS/activate-locked.json" 2>"$RESULTS/activate-locked.log" || rc=$?
cat "$RESULTS/activate-locked.json"
[ "$rc" = 0 ] || { cat "$RESULTS/activate-locked.log"; show 'sim| ' "$RESULTS/sim.log"; fail "station activate exited with $rc"; }
grep -q '"outcome": *"activated"' "$RESULTS/activate-locked.json" || fail "the locked phone was not activated"
grep -q '"activation_locked": *true' "$RESULTS/activate-locked.json" || fail "the station did not see the Activation Lock"
grep -q "$CODE" "$RESULTS/activate-locked.json" "$RESULTS/activate-locked.log" && fail "the bypass code appears unmasked in the station's output"
state="$(timeout 60 ideviceinfo -u "$locked" -k ActivationState)"
echo "ideviceinfo says: $state"
[ "$state" = Activated ] || fail "ideviceinfo says $state after activation"

step "station activate --udid $clean"
activate "$clean" >"$RESULTS/activate-clean.json" 2>"$RESULTS/activate-clean.log" || { cat "$RESULTS/activate-clean.log"; fail "station activate (clean) failed"; }
cat "$RESULTS/activate-clean.json"
grep -q '"outcome": *"activated"' "$RESULTS/activate-clean.json" || fail "the clean phone was not activated"
grep -q '"activation_locked": *false' "$RESULTS/activate-clean.json" || fail "the clean phone was reported locked"

stop_usbmuxd
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
echo "station-activate: ok"
