# Helpers for USB VM scenarios (sourced inside the guest: `. /usb-vm/lib.sh`). busybox sh.

# Prints a failure and exits the scenario non-zero.
fail() {
    echo "SCENARIO FAILED: $*" >&2
    exit 1
}

step() { echo "---- $*"; }

# Loads configfs, dummy_hcd (num=$1 controllers, default $UDCS), libcomposite and usb_f_fs
# with their dependencies, in order, and mounts configfs.
load_usb_modules() {
    n="${1:-${UDCS:-1}}"
    kver="$(uname -r)"
    for m in $(cat /usb-vm/usb-modules); do
        [ -d "/sys/module/$m" ] && continue
        if [ "$m" = dummy_hcd ]; then
            insmod "/lib/modules/$kver/$m.ko" "num=$n" || fail "insmod $m num=$n"
        else
            insmod "/lib/modules/$kver/$m.ko" || fail "insmod $m"
        fi
    done
    grep -q ' /sys/kernel/config ' /proc/mounts || mount -t configfs none /sys/kernel/config \
        || fail "mount configfs"
    [ "$(ls /sys/class/udc | wc -l)" -ge "$n" ] || fail "expected $n UDCs, /sys/class/udc has: $(ls /sys/class/udc)"
}

# wait_for SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails after SECONDS.
wait_for() {
    limit="$1"; shift
    tries=$((limit * 5))
    while [ "$tries" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
        tries=$((tries - 1))
    done
    return 1
}

# Starts Debian's usbmuxd in the foreground mode, as root, verbose (-v), logging to $1
# (default $RESULTS/usbmuxd.log), with the further options $2...; sets USBMUXD_PID; waits for
# its socket.
start_usbmuxd() {
    USBMUXD_LOG="${1:-$RESULTS/usbmuxd.log}"
    [ $# -gt 0 ] && shift
    usbmuxd -f -U root -v "$@" >"$USBMUXD_LOG" 2>&1 &
    USBMUXD_PID=$!
    wait_for 20 test -S /run/usbmuxd || { cat "$USBMUXD_LOG"; fail "usbmuxd did not create /run/usbmuxd"; }
}

stop_usbmuxd() {
    [ -n "${USBMUXD_PID:-}" ] || return 0
    kill "$USBMUXD_PID" 2>/dev/null
    wait_for 10 sh -c "! kill -0 $USBMUXD_PID" || kill -9 "$USBMUXD_PID" 2>/dev/null
    USBMUXD_PID=""
}

# Prints a file with a prefix (for logs going to the console).
show() {
    prefix="$1"; shift
    sed "s/^/$prefix/" "$@"
}
