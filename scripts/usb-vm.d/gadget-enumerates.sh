# Scenario: gadget phones enumerate on the dummy host; Debian's usbmuxd brings their mux up
# The kernel's USB stack sees each `station-sim gadget` phone as an Apple device with four
# configurations; the real usbmuxd picks configuration 4, claims the mux interface and
# completes the VERSION/SETUP bring-up with the phone (docs/protocol.md §2.3, §2.6).
. /usb-vm/lib.sh

step "modules: dummy_hcd num=$UDCS, libcomposite, usb_f_fs; configfs"
load_usb_modules "$UDCS"
ls /sys/class/udc

step "station-sim gadget --devices $UDCS"
station-sim gadget --devices "$UDCS" --ready "$RESULTS/ready.json" >"$RESULTS/sim.log" 2>&1 &
SIM=$!
wait_for 60 test -s "$RESULTS/ready.json" || { show 'sim| ' "$RESULTS/sim.log"; fail "no ready file"; }
udids="$(sed -n 's/^ *"udid": "\(.*\)",$/\1/p' "$RESULTS/ready.json")"
echo "$udids" | sed 's/^/udid: /'
[ "$(echo "$udids" | wc -l)" = "$UDCS" ] || fail "ready file lists $(echo "$udids" | wc -l) phones"
grep -q '"udc": "dummy_udc.0"' "$RESULTS/ready.json" || fail "ready file names no UDC"

step "the kernel enumerates $UDCS Apple devices"
count_apple() { grep -l '^05ac$' /sys/bus/usb/devices/*/idVendor 2>/dev/null | wc -l; }
wait_for 30 sh -c "[ \$(grep -l '^05ac\$' /sys/bus/usb/devices/*/idVendor 2>/dev/null | wc -l) -ge $UDCS ]" \
    || { show 'sim| ' "$RESULTS/sim.log"; fail "only $(count_apple) Apple devices enumerated"; }
for d in /sys/bus/usb/devices/*; do
    [ "$(cat "$d/idVendor" 2>/dev/null)" = 05ac ] || continue
    echo "$(basename "$d"): $(cat "$d/idVendor"):$(cat "$d/idProduct") '$(cat "$d/product")' serial $(cat "$d/serial") configs $(cat "$d/bNumConfigurations") speed $(cat "$d/speed")"
    [ "$(cat "$d/bNumConfigurations")" = 4 ] || fail "$(basename "$d") has $(cat "$d/bNumConfigurations") configurations, not 4"
    # iSerialNumber is the UDID without its dash (docs/protocol.md §2.9).
    echo "$udids" | tr -d - | grep -qx "$(cat "$d/serial")" || fail "serial $(cat "$d/serial") is no phone's UDID"
done
ls /dev/bus/usb/*/

step "usbmuxd -f -U root -v"
start_usbmuxd
# Each phone: configuration 4 chosen, the mux interface claimed, VERSION answered.
wait_for 30 sh -c "[ \$(grep -c 'Connected to v2.0 device' $RESULTS/usbmuxd.log) -ge $UDCS ]"
ok=$?
show 'usbmuxd| ' "$RESULTS/usbmuxd.log"
grep -E 'control request|session|ERROR|WARN' "$RESULTS/sim.log" | sed 's/^/sim| /'
[ "$ok" = 0 ] || fail "usbmuxd did not bring the mux up with all $UDCS phones"
grep -q 'Could not find a suitable USB interface' "$RESULTS/usbmuxd.log" && fail "usbmuxd found no mux interface"
[ "$(grep -c 'Found new device with v/p 05ac:' "$RESULTS/usbmuxd.log")" -ge "$UDCS" ] || fail "usbmuxd did not find $UDCS Apple devices"
[ "$(grep -c 'Setting configuration for device .*, from 1 to 4' "$RESULTS/usbmuxd.log")" -ge "$UDCS" ] \
    || fail "usbmuxd did not choose configuration 4 for every phone"

stop_usbmuxd
kill "$SIM"
wait_for 20 sh -c "! kill -0 $SIM" || fail "station-sim gadget did not stop on SIGTERM"
[ ! -e /sys/kernel/config/usb_gadget/station-sim-0 ] || fail "the gadgets were not removed"
echo "gadget-enumerates: ok"
