# Scenario: the real usbmuxd and libimobiledevice judge 4 gadget phones (list, info, pair, validate)
# Debian's usbmuxd (root, foreground) finds the phones through the kernel's USB stack;
# idevice_id lists their UDIDs, ideviceinfo reads the full lockdown dump over the USB mux,
# idevicepair pairs and validates: the phone side is station-sim's virtual phone behind a
# FunctionFS gadget (issue 11, "Done when").
. /usb-vm/lib.sh

load_usb_modules "$UDCS"
# A phone drops a lockdown connection idle for 10 s (docs/protocol.md §3.1). Here the host
# tools run under TCG emulation, where libimobiledevice's RSA key generation between two
# requests of its first pairing took more than 10 s on a loaded machine (a GetValue, then
# the Pair request 10 s later than the phone waits): the limit is scaled to the emulated
# host's speed, as the rest of the scenario's time limits are.
step "station-sim gadget --devices $UDCS --idle-timeout-ms 60000"
station-sim gadget --devices "$UDCS" --idle-timeout-ms 60000 --ready "$RESULTS/ready.json" >"$RESULTS/sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/ready.json" || { show 'sim| ' "$RESULTS/sim.log"; fail "no ready file"; }
udids="$(sed -n 's/^ *"udid": "\(.*\)",$/\1/p' "$RESULTS/ready.json" | sort)"
mkdir -p /var/lib/lockdown
start_usbmuxd

step "idevice_id -l"
listed() { idevice_id -l 2>/dev/null | sort; }
wait_for 60 sh -c "[ \$(idevice_id -l 2>/dev/null | wc -l) -ge $UDCS ]" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; show 'sim| ' "$RESULTS/sim.log"; fail "idevice_id -l lists $(listed | wc -l) phones, not $UDCS"; }
listed | tee "$RESULTS/idevice_id.txt"
[ "$(listed)" = "$udids" ] || fail "idevice_id -l does not list the bench's UDIDs: expected $udids"

first="$(echo "$udids" | head -1)"
step "ideviceinfo -u $first"
timeout 60 ideviceinfo -u "$first" >"$RESULTS/ideviceinfo.txt" 2>&1 \
    || { cat "$RESULTS/ideviceinfo.txt"; show 'sim| ' "$RESULTS/sim.log"; fail "ideviceinfo failed"; }
head -20 "$RESULTS/ideviceinfo.txt"
echo "... ($(wc -l <"$RESULTS/ideviceinfo.txt") lines)"
grep -q "^UniqueDeviceID: $first\$" "$RESULTS/ideviceinfo.txt" || fail "ideviceinfo shows another UniqueDeviceID"
for key in ProductType ProductVersion SerialNumber ActivationState WiFiAddress; do
    grep -q "^$key: " "$RESULTS/ideviceinfo.txt" || fail "ideviceinfo has no $key"
done
serial="$(sed -n 's/^ *"serial": "\(.*\)",$/\1/p' "$RESULTS/ready.json" | head -1)"
grep -q "^SerialNumber: " "$RESULTS/ideviceinfo.txt" || fail "no SerialNumber"

step "idevicepair -u $first pair / validate"
timeout 60 idevicepair -u "$first" pair 2>&1 | tee "$RESULTS/pair.txt"
grep -q '^SUCCESS: Paired with device' "$RESULTS/pair.txt" || { show 'sim| ' "$RESULTS/sim.log"; fail "idevicepair pair failed"; }
timeout 60 idevicepair -u "$first" validate 2>&1 | tee "$RESULTS/validate.txt"
grep -q '^SUCCESS: Validated pairing with device' "$RESULTS/validate.txt" || fail "idevicepair validate failed"
ls /var/lib/lockdown
[ -f "/var/lib/lockdown/$first.plist" ] || fail "usbmuxd kept no pair record for $first"

step "every phone answers lockdown over USB"
for u in $udids; do
    name="$(timeout 60 ideviceinfo -u "$u" -k UniqueDeviceID 2>&1)"
    [ "$name" = "$u" ] || fail "ideviceinfo -u $u -k UniqueDeviceID said: $name"
    echo "$u: ok"
done

stop_usbmuxd
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
echo "usbmuxd-judges: ok"
