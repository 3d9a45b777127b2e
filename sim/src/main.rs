//! `station-sim`: serve a virtual bench of iPhones on a usbmuxd-compatible socket.

// No unsafe code: memory safety of what we parse rests on the compiler (docs/testing.md, fuzzing).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use station_sim::{default_world, Bench, BenchConfig, ConfigSource, World};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "station-sim",
    version,
    about = "A virtual bench of iPhones behind a usbmuxd-compatible socket"
)]
struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the bench until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Print a generated world as TOML (a starting point for a world file).
    World(WorldArgs),
    /// Serve the bench's phones as USB gadgets (configfs + FunctionFS; Linux, as root),
    /// one per free UDC, until SIGINT/SIGTERM. The bench's own socket is served too.
    #[cfg(target_os = "linux")]
    Gadget(GadgetArgs),
}

#[cfg(target_os = "linux")]
#[derive(Debug, Args)]
struct GadgetArgs {
    #[command(flatten)]
    bench: BenchArgs,
    /// The bench's own usbmuxd-compatible socket (the real usbmuxd uses /var/run/usbmuxd).
    #[arg(long, default_value = "/run/station-sim/bench.sock")]
    socket: PathBuf,
    /// configfs mount point.
    #[arg(long, default_value = "/sys/kernel/config")]
    configfs: PathBuf,
    /// Directory of the UDCs.
    #[arg(long, default_value = "/sys/class/udc")]
    udc_dir: PathBuf,
    /// Where the FunctionFS instances are mounted (one directory each).
    #[arg(long, default_value = "/run/station-sim/ffs")]
    ffs_root: PathBuf,
}

#[derive(Debug, Args)]
struct WorldSource {
    /// Number of phones of the generated world.
    #[arg(long, short = 'n', conflicts_with = "world")]
    devices: Option<usize>,
    /// World file (TOML, see docs/world.md).
    #[arg(long)]
    world: Option<PathBuf>,
    /// Seed for generated values (overrides the world file's `seed`).
    #[arg(long)]
    seed: Option<u64>,
}

/// What `serve` and `gadget` both take: the world, the ready file and the state.
#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    source: WorldSource,
    /// Write a JSON description of the bench here once it serves (`gadget`: with each
    /// phone's UDC, once the gadgets exist).
    #[arg(long)]
    ready: Option<PathBuf>,
    /// Where pairings, keys and the SystemBUID persist [default: <socket>.state].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Close lockdown connections idle for this long (a real phone: ~10 s).
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
}

impl BenchArgs {
    /// The bench on `socket` as these arguments describe it. A ready file left by an
    /// earlier run is removed first: it must not be mistaken for this one being ready.
    fn config(&self, socket: &Path) -> Result<BenchConfig, String> {
        let world = load_world(&self.source)?;
        let state_dir = self.state_dir.clone().unwrap_or_else(|| {
            let mut s = socket.to_path_buf().into_os_string();
            s.push(".state");
            PathBuf::from(s)
        });
        self.remove_ready();
        let mut cfg = BenchConfig::new(socket, world, state_dir);
        cfg.idle_timeout = Duration::from_millis(self.idle_timeout_ms.max(1));
        Ok(cfg)
    }

    fn remove_ready(&self) {
        if let Some(path) = &self.ready {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    bench: BenchArgs,
    /// Unix socket to serve; point clients at it with USBMUXD_SOCKET_ADDRESS=UNIX:<path>.
    #[arg(long, default_value_os_t = default_socket())]
    socket: PathBuf,
    /// Generate phone keys afresh each run instead of caching them in the state dir.
    #[arg(long)]
    no_key_cache: bool,
    /// Loopback port of the stand-in activation server [default: any free port; the
    /// ready file's `activation_url` tells which].
    #[arg(long, default_value_t = 0)]
    activation_port: u16,
    /// Bypass-code sources the ready-made station configuration lists, in order (the ready
    /// file's `station_config` names it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [ConfigSource::Intune, ConfigSource::Kandji]
    )]
    station_config_sources: Vec<ConfigSource>,
}

#[derive(Debug, Args)]
struct WorldArgs {
    #[command(flatten)]
    source: WorldSource,
}

fn default_socket() -> PathBuf {
    std::env::temp_dir().join("station-sim.sock")
}

fn load_world(source: &WorldSource) -> Result<World, String> {
    let mut world = match &source.world {
        Some(path) => World::load(path).map_err(|e| e.to_string())?,
        None => default_world(source.devices.unwrap_or(3), source.seed.unwrap_or(0)),
    };
    if let Some(seed) = source.seed {
        world.seed = seed;
    }
    Ok(world)
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "station_sim=info",
        (false, 1) => "station_sim=debug,station_protocol=debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .init();
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut cfg = args.bench.config(&args.socket)?;
    let load_path = cfg.state_dir.join(MDM_LOAD_FILE);
    cfg.cache_keys = !args.no_key_cache;
    cfg.activation_port = args.activation_port;
    cfg.station_config_sources = args.station_config_sources.clone();
    let mut bench = Bench::start(cfg).await.map_err(|e| e.to_string())?;
    let mut signals = BenchSignals::watch();
    if let Some(path) = &args.bench.ready {
        if let Err(e) = bench.ready_info().write(path) {
            bench.shutdown().await;
            return Err(e.to_string());
        }
    }
    serve_until_stopped(&mut bench, &mut signals).await;
    let loads = [bench.graph().load(), bench.kandji().load()];
    bench.shutdown().await;
    args.bench.remove_ready();
    report_load(&load_path, &loads)
}

/// What the MDM stand-ins saw of the station's request rate, written at the end of `serve`
/// into the state directory (docs/world.md, "The MDM stand-ins").
const MDM_LOAD_FILE: &str = "mdm-load.json";

/// Writes the stand-ins' load reports; a budget exceeded fails the run.
fn report_load(path: &std::path::Path, loads: &[station_sim::LoadReport]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(loads).map_err(|e| e.to_string())?;
    station_protocol::atomic_file::write(
        path,
        text.as_bytes(),
        station_protocol::atomic_file::SHARED,
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let exceeded: Vec<String> = loads
        .iter()
        .filter(|l| l.violations > 0)
        .map(|l| {
            format!(
                "{}: {} time(s), first: {}",
                l.service,
                l.violations,
                l.first_violations.first().map_or("", String::as_str)
            )
        })
        .collect();
    if exceeded.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the station exceeded an MDM request budget ({}); see {}",
            exceeded.join("; "),
            path.display()
        ))
    }
}

#[cfg(target_os = "linux")]
async fn gadget(args: GadgetArgs) -> Result<(), String> {
    use station_sim::gadget::{GadgetBench, GadgetOptions};
    let cfg = args.bench.config(&args.socket)?;
    if let Some(parent) = args.socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let bench = Bench::start(cfg).await.map_err(|e| e.to_string())?;
    let options = GadgetOptions {
        configfs: args.configfs.clone(),
        sysfs_udc: args.udc_dir.clone(),
        ffs_root: args.ffs_root.clone(),
    };
    let mut gadgets = GadgetBench::start(bench, options)
        .await
        .map_err(|e| e.to_string())?;
    let mut signals = BenchSignals::watch();
    if let Some(path) = &args.bench.ready {
        if let Err(e) = gadgets.ready_info().write(path) {
            gadgets.shutdown().await;
            return Err(e.to_string());
        }
    }
    serve_until_stopped(gadgets.bench_mut(), &mut signals).await;
    gadgets.shutdown().await;
    args.bench.remove_ready();
    Ok(())
}

/// The signals `serve` and `gadget` answer to, watched from before the ready file is
/// written: a signal that arrives before its handler is installed takes its default action
/// (SIGUSR1's kills the process), so a caller that signals as soon as the file appears
/// would find the bench gone.
struct BenchSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
    usbmuxd_away: Option<tokio::signal::unix::Signal>,
    usbmuxd_back: Option<tokio::signal::unix::Signal>,
}

impl BenchSignals {
    fn watch() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch {name}");
                None
            }
        };
        BenchSignals {
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
            terminate: watch(SignalKind::terminate(), "SIGTERM"),
            usbmuxd_away: watch(SignalKind::user_defined1(), "SIGUSR1"),
            usbmuxd_back: watch(SignalKind::user_defined2(), "SIGUSR2"),
        }
    }
}

/// Serves until SIGINT or SIGTERM. SIGUSR1 makes the bench's usbmuxd go away as the real
/// daemon does when it exits; SIGUSR2 starts it again (same socket, same phones).
async fn serve_until_stopped(bench: &mut Bench, signals: &mut BenchSignals) {
    async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
        match signal {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    loop {
        tokio::select! {
            () = next(&mut signals.interrupt) => {
                tracing::info!("SIGINT");
                return;
            }
            () = next(&mut signals.terminate) => {
                tracing::info!("SIGTERM");
                return;
            }
            () = next(&mut signals.usbmuxd_away) => bench.stop_usbmuxd().await,
            () = next(&mut signals.usbmuxd_back) => {
                if let Err(e) = bench.start_usbmuxd() {
                    tracing::error!(error = %e, "usbmuxd could not start again");
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::World(args) => load_world(&args.source).and_then(|world| {
            let pinned = world.pinned().map_err(|e| e.to_string())?;
            print!("{}", pinned.to_toml());
            Ok(())
        }),
        Command::Serve(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(serve(args)),
            Err(e) => Err(format!("cannot start the async runtime: {e}")),
        },
        #[cfg(target_os = "linux")]
        Command::Gadget(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => {
                let result = rt.block_on(gadget(args));
                // A bulk write the host never takes blocks its thread in the kernel: do not
                // wait for such threads at exit.
                rt.shutdown_timeout(Duration::from_secs(2));
                result
            }
            Err(e) => Err(format!("cannot start the async runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("station-sim: error: {message}");
            ExitCode::FAILURE
        }
    }
}
