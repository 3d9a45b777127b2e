# Scenario: the world's plug schedule binds and unbinds gadgets; usbmuxd sees them come, go and come back
# A phone with `plug_at_ms` is bound to its UDC late, one with `unplug_at_ms` is unbound, one
# with `plug_periods` is unbound and bound again: real USB disconnects and reconnects on the
# host side, which udevd announces and the real usbmuxd follows (libusb hotplug), the
# replugged phone under a new DeviceID.
. /usb-vm/lib.sh

load_usb_modules 3
cat >/tmp/world.toml <<'TOML'
seed = 11

[[device]]

[[device]]
plug_periods = [{ unplug_at_ms = 9000 }, { plug_at_ms = 24000 }]

[[device]]
plug_at_ms = 9000
TOML

step "station-sim gadget --world (phone 2 leaves and phone 3 arrives at 9 s, phone 2 is back at 24 s)"
station-sim gadget --world /tmp/world.toml --ready "$RESULTS/ready.json" >"$RESULTS/sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/ready.json" || { show 'sim| ' "$RESULTS/sim.log"; fail "no ready file"; }
# Without preflight (-p): usbmuxd announces a phone as soon as its mux is up. With it, a phone
# appears only once usbmuxd's pairing thread for it is done; seen under TCG on a loaded host:
# while the preflight threads of the first two phones were still making pair-record keys, the
# preflight of each phone plugged in meanwhile failed 5 s after it started (`Could not connect
# to lockdownd ..., lockdown error -8`, no client of it accepted) and usbmuxd never announced
# that phone. Preflight is usbmuxd-judges' subject; this scenario's is hotplug.
start_usbmuxd "$RESULTS/usbmuxd.log" -p
apple_ports() {
    for d in /sys/bus/usb/devices/*; do
        [ "$(cat "$d/idVendor" 2>/dev/null)" = 05ac ] && basename "$d"
    done | sort | tr '\n' ' '
}
# The ready file is written once the gadgets are bound; the host side enumerates them a
# moment later (under TCG, sometimes after this line), so wait for the kernel.
wait_for 30 sh -c '[ "$(for d in /sys/bus/usb/devices/*; do [ "$(cat $d/idVendor 2>/dev/null)" = 05ac ] && basename $d; done | sort | tr "\n" " ")" = "1-1 2-1 " ]' \
    || fail "expected phones on 1-1 and 2-1 at start, got: $(apple_ports)"
echo "at start: $(apple_ports)"
wait_for 30 sh -c "[ \$(grep -c 'Found new device with v/p 05ac:' $RESULTS/usbmuxd.log) -ge 2 ]" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; fail "usbmuxd did not find the 2 phones plugged at start"; }

step "waiting for the schedule"
PHONE2="$(sed -n 's/^ *"udid": "\(.*\)",$/\1/p' "$RESULTS/ready.json" | sed -n 2p)"
wait_for 40 sh -c '[ "$(for d in /sys/bus/usb/devices/*; do [ "$(cat $d/idVendor 2>/dev/null)" = 05ac ] && basename $d; done | sort | tr "\n" " ")" = "1-1 3-1 " ]' \
    || { show 'sim| ' "$RESULTS/sim.log"; fail "after 9 s expected phones on 1-1 and 3-1, got: $(apple_ports)"; }
echo "after 9 s: $(apple_ports)"
# usbmuxd heard of the new phone through udevd (hotplug) and set it up.
wait_for 30 grep -q 'Found new device with v/p 05ac:.* at 3-' "$RESULTS/usbmuxd.log" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; fail "usbmuxd did not see phone 3 arrive"; }
wait_for 30 sh -c "[ \$(grep -c 'Connected to v2.0 device' $RESULTS/usbmuxd.log) -ge 3 ]" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; fail "usbmuxd did not bring the mux up with phone 3"; }
# usbmuxd let phone 2 go ...
wait_for 30 sh -c "! idevice_id -l | grep -q '^$PHONE2\$'" || fail "usbmuxd still lists $PHONE2 after its unplug"

step "waiting for phone 2 to come back (24 s)"
wait_for 40 sh -c '[ "$(for d in /sys/bus/usb/devices/*; do [ "$(cat $d/idVendor 2>/dev/null)" = 05ac ] && basename $d; done | sort | tr "\n" " ")" = "1-1 2-1 3-1 " ]' \
    || { show 'sim| ' "$RESULTS/sim.log"; fail "after 24 s expected phones on 1-1, 2-1 and 3-1, got: $(apple_ports)"; }
echo "after 24 s: $(apple_ports)"
# ... and took it back, as a new device: found on bus 2 twice, the mux up a fourth time.
wait_for 30 sh -c "[ \$(grep -c 'Found new device with v/p 05ac:.* at 2-' $RESULTS/usbmuxd.log) -ge 2 ]" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; fail "usbmuxd did not see phone 2 come back"; }
wait_for 30 sh -c "[ \$(grep -c \"Connected to v2.0 device .* with serial number $PHONE2\" $RESULTS/usbmuxd.log) -ge 2 ]" \
    || { show 'usbmuxd| ' "$RESULTS/usbmuxd.log"; fail "usbmuxd did not bring the mux up with phone 2 again"; }
wait_for 30 sh -c "idevice_id -l | grep -q '^$PHONE2\$'" || fail "usbmuxd does not list $PHONE2 after its replug"
ids="$(sed -n "s/.*Connected to v2.0 device \([0-9]*\) on location .* with serial number $PHONE2.*/\1/p" "$RESULTS/usbmuxd.log" | tr '\n' ' ')"
echo "usbmuxd's DeviceIDs of $PHONE2: $ids"
set -- $ids
[ $# = 2 ] && [ "$1" != "$2" ] || fail "usbmuxd did not give the replugged phone a new DeviceID"
show 'usbmuxd| ' "$RESULTS/usbmuxd.log"
grep -E 'gadget (bound|unbound)|mux session' "$RESULTS/sim.log" | sed 's/^/sim| /'
[ "$(grep -E "gadget (bound|unbound) udid=$PHONE2" "$RESULTS/sim.log" | sed 's/.*gadget \([a-z]*\) .*/\1/' | tr '\n' ' ')" = "bound unbound bound " ] \
    || fail "the sim did not bind, unbind and bind phone 2's gadget as its world says"

stop_usbmuxd
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
echo "gadget-plug-schedule: ok"
