//! A configfs USB gadget shaped like an iPhone, and the UDCs it can be bound to.
//!
//! configfs layout (the kernel's Documentation/usb/gadget_configfs.rst): a gadget is a
//! directory under `usb_gadget/` with the device descriptor's fields as files, `strings/0x409/`
//! for its texts, `configs/c.N/` for each configuration, `functions/ffs.NAME/` for each
//! FunctionFS function (linked into the configurations that hold it) and `UDC`, which binds
//! it to a device controller when a controller's name is written and unbinds it when an
//! empty line is written.

use std::path::{Path, PathBuf};

use super::descriptors::{usb_serial, Interface};
use super::ffs::{BulkWriter, FunctionFs, PipeEvent};
use super::GadgetError;
use tokio::sync::mpsc;

/// `idVendor` of Apple (docs/protocol.md §2.1).
pub const APPLE_VENDOR_ID: u16 = 0x05ac;

/// The configurations of a phone in mode 1 (docs/protocol.md §2.3): four, the mux interface
/// in 3 and 4, so usbmuxd, which goes from the highest down, picks 4. Configuration 2 of a
/// real phone is the "iPod USB Interface" (audio and HID); it stands here as PTP + Apple USB
/// Ethernet, which only has to be there and not hold the mux.
pub fn iphone_configurations() -> Vec<(&'static str, Vec<Interface>)> {
    vec![
        ("PTP", vec![Interface::ptp()]),
        (
            "iPod USB Interface",
            vec![Interface::ptp(), Interface::apple_ethernet()],
        ),
        (
            "PTP + Apple Mobile Device",
            vec![Interface::ptp(), Interface::mux()],
        ),
        (
            "PTP + Apple Mobile Device + Apple USB Ethernet",
            vec![
                Interface::ptp(),
                Interface::mux(),
                Interface::apple_ethernet(),
            ],
        ),
    ]
}

/// What a gadget phone looks like on the bus.
#[derive(Debug, Clone)]
pub struct PhoneShape {
    /// Directory name under `usb_gadget/`, also the prefix of its FunctionFS instances.
    pub name: String,
    pub product_id: u16,
    pub udid: String,
    pub product: String,
}

/// One mux interface of a gadget (one per configuration that holds it) as the async side
/// uses it: its events and its bulk IN writer.
pub struct MuxPort {
    pub configuration: usize,
    pub events: mpsc::Receiver<PipeEvent>,
    pub writer: BulkWriter,
}

impl std::fmt::Debug for MuxPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxPort")
            .field("configuration", &self.configuration)
            .finish()
    }
}

#[derive(Debug)]
pub struct Gadget {
    pub shape: PhoneShape,
    dir: PathBuf,
    functions: Vec<FunctionFs>,
    /// (configuration dir, link name) of every function link.
    links: Vec<PathBuf>,
    configs: Vec<PathBuf>,
}

impl std::fmt::Debug for FunctionFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionFs")
            .field("instance", &self.instance)
            .finish()
    }
}

fn write(path: &Path, value: &str) -> Result<(), GadgetError> {
    std::fs::write(path, value).map_err(|e| GadgetError::io("write", path, e))
}

fn mkdir(path: &Path) -> Result<(), GadgetError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(GadgetError::io("create", path, e)),
    }
}

impl Gadget {
    /// Creates the gadget under `configfs` (`/sys/kernel/config`), mounts its FunctionFS
    /// instances under `ffs_root` and writes their descriptors. Not bound yet.
    pub fn create(
        configfs: &Path,
        ffs_root: &Path,
        shape: PhoneShape,
        udc_speed_file: PathBuf,
    ) -> Result<(Gadget, Vec<MuxPort>), GadgetError> {
        let gadgets = configfs.join("usb_gadget");
        if !gadgets.is_dir() {
            return Err(GadgetError::Setup(format!(
                "{} does not exist: load libcomposite and mount configfs there \
                 (modprobe libcomposite; mount -t configfs none /sys/kernel/config)",
                gadgets.display()
            )));
        }
        let dir = gadgets.join(&shape.name);
        if dir.exists() {
            return Err(GadgetError::Setup(format!(
                "{} already exists (left by an earlier run?): remove it first",
                dir.display()
            )));
        }
        mkdir(&dir)?;
        let mut gadget = Gadget {
            shape: shape.clone(),
            dir: dir.clone(),
            functions: Vec::new(),
            links: Vec::new(),
            configs: Vec::new(),
        };
        match gadget.populate(ffs_root, udc_speed_file) {
            Ok(ports) => Ok((gadget, ports)),
            Err(e) => {
                gadget.remove();
                Err(e)
            }
        }
    }

    fn populate(
        &mut self,
        ffs_root: &Path,
        udc_speed_file: PathBuf,
    ) -> Result<Vec<MuxPort>, GadgetError> {
        let dir = self.dir.clone();
        write(&dir.join("idVendor"), &format!("{APPLE_VENDOR_ID:#06x}"))?;
        write(
            &dir.join("idProduct"),
            &format!("{:#06x}", self.shape.product_id),
        )?;
        write(&dir.join("bcdUSB"), "0x0200")?;
        write(&dir.join("bcdDevice"), "0x1000")?;
        write(&dir.join("bMaxPacketSize0"), "64")?;
        let strings = dir.join("strings/0x409");
        mkdir(&strings)?;
        write(&strings.join("manufacturer"), "Apple Inc.")?;
        write(&strings.join("product"), &self.shape.product)?;
        write(&strings.join("serialnumber"), &usb_serial(&self.shape.udid))?;

        let mut ports = Vec::new();
        for (index, (label, interfaces)) in iphone_configurations().into_iter().enumerate() {
            let number = index + 1;
            let config = dir.join(format!("configs/c.{number}"));
            mkdir(&config)?;
            self.configs.push(config.clone());
            write(&config.join("MaxPower"), "500")?;
            let config_strings = config.join("strings/0x409");
            mkdir(&config_strings)?;
            write(&config_strings.join("configuration"), label)?;
            for (slot, interface) in interfaces.into_iter().enumerate() {
                // FunctionFS instance names are global to the kernel: the gadget's name
                // keeps them apart.
                let instance = format!("{}c{number}i{slot}", self.shape.name.replace('-', ""));
                let function_dir = dir.join(format!("functions/ffs.{instance}"));
                mkdir(&function_dir)?;
                let is_mux = interface.is_mux();
                let (events_tx, events_rx) = if is_mux {
                    let (tx, rx) = mpsc::channel(64);
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                let (function, writer) = FunctionFs::start(
                    &instance,
                    &ffs_root.join(&instance),
                    interface,
                    events_tx,
                    udc_speed_file.clone(),
                )?;
                self.functions.push(function);
                let link = config.join(format!("ffs.{instance}"));
                std::os::unix::fs::symlink(&function_dir, &link)
                    .map_err(|e| GadgetError::io("link", &link, e))?;
                self.links.push(link);
                if let (Some(events), Some(writer)) = (events_rx, writer) {
                    ports.push(MuxPort {
                        configuration: number,
                        events,
                        writer,
                    });
                }
            }
        }
        Ok(ports)
    }

    /// Binds the gadget to `udc`: the phone is plugged in.
    pub fn bind(&self, udc: &str) -> Result<(), GadgetError> {
        write(&self.dir.join("UDC"), udc)
    }

    /// Unbinds it from its UDC: the phone is pulled out (a real disconnect on the host).
    pub fn unbind(&self) -> Result<(), GadgetError> {
        let udc = self.dir.join("UDC");
        let bound = std::fs::read_to_string(&udc)
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
        if bound {
            write(&udc, "\n")?;
        }
        Ok(())
    }

    /// Unbinds and takes the gadget apart, best effort (what fails is logged): links,
    /// configurations, FunctionFS mounts, functions, strings, the gadget itself.
    pub fn remove(&mut self) {
        for function in &self.functions {
            function.stop();
        }
        if let Err(e) = self.unbind() {
            tracing::warn!(gadget = %self.shape.name, error = %e, "unbind failed");
        }
        let quiet_remove = |path: &Path, what: &str| {
            let result = if what == "link" {
                std::fs::remove_file(path)
            } else {
                std::fs::remove_dir(path)
            };
            if let Err(e) = result {
                tracing::debug!(path = %path.display(), error = %e, "could not remove the {what}");
            }
        };
        for link in self.links.drain(..) {
            quiet_remove(&link, "link");
        }
        for config in self.configs.drain(..) {
            quiet_remove(&config.join("strings/0x409"), "directory");
            quiet_remove(&config, "directory");
        }
        for function in self.functions.drain(..) {
            if let Err(e) =
                rustix::mount::unmount(&function.mount, rustix::mount::UnmountFlags::DETACH)
            {
                tracing::debug!(mount = %function.mount.display(), error = %e, "unmount failed");
            }
            quiet_remove(&function.mount, "directory");
            quiet_remove(
                &self
                    .dir
                    .join(format!("functions/ffs.{}", function.instance)),
                "directory",
            );
        }
        quiet_remove(&self.dir.join("strings/0x409"), "directory");
        quiet_remove(&self.dir, "directory");
    }
}

/// The UDCs of the machine (`/sys/class/udc`), sorted so `dummy_udc.0` comes first.
pub fn udcs(sysfs_udc: &Path) -> Result<Vec<String>, GadgetError> {
    let entries =
        std::fs::read_dir(sysfs_udc).map_err(|e| GadgetError::io("list", sysfs_udc, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // dummy_udc.10 after dummy_udc.9.
    names.sort_by_key(|n| {
        let (stem, number) = n.rsplit_once('.').unwrap_or((n.as_str(), ""));
        (
            stem.to_string(),
            number.parse::<u32>().unwrap_or(u32::MAX),
            n.clone(),
        )
    });
    Ok(names)
}

/// UDCs some gadget (ours or another program's) is bound to now.
pub fn busy_udcs(configfs: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(configfs.join("usb_gadget")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("UDC")).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
