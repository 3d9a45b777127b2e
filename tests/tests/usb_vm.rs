//! The USB VM rig (`scripts/usb-vm`): the virtual phones as USB gadgets on a real Linux USB
//! stack in a qemu VM, judged by Debian's usbmuxd and libimobiledevice (issue 11).
//!
//! Runs every scenario in `scripts/usb-vm.d/` with the binaries `cargo build --workspace`
//! left in `target/debug` (`scripts/test` builds them first). Needs `qemu-system-x86_64`
//! (Debian: `qemu-system-x86`, which `.ci/run` and `scripts/test` install) and apt's package
//! lists (the rig fetches Debian's kernel, busybox, usbmuxd and the tools with
//! `apt-get download`); fails, never skips, when they are missing.

use std::process::Command;
use std::time::Duration;

use station_tests::{require_tool, run_with_timeout, workspace_root};

/// Assembly (~20 s) plus one VM per scenario (~15–30 s each under TCG) on a busy 2-core box,
/// with room to spare; the rig's own limits (per scenario, per VM) fire first.
const RIG_TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn usb_vm_scenarios_pass() {
    require_tool("qemu-system-x86_64");
    let root = workspace_root();
    let scenarios: Vec<String> = std::fs::read_dir(root.join("scripts/usb-vm.d"))
        .expect("scripts/usb-vm.d")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sh") && n != "lib.sh")
        .map(|n| n.trim_end_matches(".sh").to_string())
        .collect();
    assert!(!scenarios.is_empty(), "no scenarios in scripts/usb-vm.d");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("scripts/usb-vm"))
        .arg("--no-build")
        .arg("--out")
        .arg(root.join("target/usb-vm/test-out"))
        .current_dir(&root);
    let output = run_with_timeout(cmd, RIG_TIMEOUT);
    println!("{output}");
    assert!(output.status.success(), "scripts/usb-vm failed: {output}");
    for scenario in &scenarios {
        assert!(
            output.stdout.contains(&format!("usb-vm: PASS {scenario} ")),
            "scenario {scenario} did not report PASS: {output}"
        );
    }
}
