//! `station-sim`: a virtual bench of iPhones behind a usbmuxd-compatible unix socket.
//!
//! Real clients — libimobiledevice's `idevice_id`, `ideviceinfo`, `idevicepair`,
//! pymobiledevice3 — work against it unchanged: the socket speaks usbmuxd's protocol
//! (plist and binary), and every virtual phone answers lockdown (port 62078) the way a
//! real one does, pairing and TLS sessions included.
//!
//! ```no_run
//! # async fn demo() -> Result<(), station_sim::SimError> {
//! use station_sim::{default_world, Bench, BenchConfig};
//! let bench = Bench::start(BenchConfig::new("/tmp/bench.sock", default_world(4, 1), "/tmp/bench-state")).await?;
//! println!("{}", bench.ready_info().to_json());
//! bench.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Each bench also runs a stand-in of Apple's activation server on loopback HTTP
//! ([`Albert`], at [`Bench::albert`]) and `com.apple.mobileactivationd` on every phone, so
//! the whole activation exchange, Activation Lock and bypass codes included, can be driven
//! against it; and a proxy that answers as `https://albert.apple.com` in front of it
//! ([`AlbertProxy`], at [`Bench::albert_proxy`]), for clients whose URLs are fixed.
//!
//! It also runs stand-in MDM services ([`mdm`]): a Microsoft Entra token endpoint and
//! Graph's Intune `managedDevices` ([`Graph`], at [`Bench::graph`]) and the Kandji API
//! ([`Kandji`], at [`Bench::kandji`]), holding the phones' bypass codes; and it writes a
//! station configuration pointing at all of them ([`station_config`]).
//!
//! Layout: [`world`] (what phones exist, and what their MDMs hold), `phone` (one phone's
//! state and lockdown values), `hub` (plugged phones, DeviceIDs, events), `usbmuxd` (socket
//! protocol), [`usb_device`] (the same phones on USB bulk endpoints, for the gadget), `lockdownd` (port 62078), [`services`] (StartService), [`activation`]
//! (mobileactivationd and the stand-in activation server), `http` (the loopback HTTP
//! servers), [`mdm`] (the MDM stand-ins), `phone::tls` (the TLS of each iOS version) and
//! `legacy_tls` (OpenSSL for iOS 11 and earlier, feature `legacy-tls`), `state` (what survives a restart), [`bench`]
//! (putting it together), [`ready`] (the `--ready` file).

// No unsafe code: memory safety of what we parse rests on the compiler (docs/testing.md, fuzzing).
#![forbid(unsafe_code)]

pub mod activation;
pub mod bench;
mod error;
pub mod gadget;
pub mod hostile;
mod http;
mod hub;
#[cfg(feature = "legacy-tls")]
pub mod legacy_tls;
mod lockdownd;
mod mcinstall;
pub mod mdm;
pub mod phone;
mod plugs;
pub mod ready;
pub mod services;
mod state;
pub mod station_config;
mod stream;
pub mod usb_device;
mod usbmuxd;
pub mod world;

pub use activation::albert::{Albert, AlbertOutcome, AlbertProxy, AlbertRequest, Endpoint};
pub use bench::{Bench, BenchConfig, DEFAULT_IDLE_TIMEOUT};
pub use error::SimError;
pub use mdm::{
    Budget, Graph, GraphServer, Kandji, KandjiDevice, KandjiServer, LoadReport, ManagedDevice,
    MdmOutcome, MdmRequest, MdmService,
};
pub use ready::{ReadyDevice, ReadyInfo, ReadyIntune, ReadyKandji, ReadyMdm};
pub use services::{LockdownService, ServiceConnection, ServiceRegistry};
pub use station_config::ConfigSource;
pub use stream::PhoneStream;
pub use usb_device::{UsbDevice, UsbDeviceEnd};
pub use world::{
    default_world, ActivationServerSpec, ActivationState, CloudConfig, DeviceProfile, DeviceSpec,
    Enrollment, EnrollmentSpec, FaultSpec, FaultWindow, HttpFaultSpec, IntuneSpec, KandjiSpec,
    Lock, Mdm, PlugPeriod, Trust, WindowAnswer, World, WorldError, WrongCredentials,
};
