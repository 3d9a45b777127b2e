//! A throw-away PostgreSQL cluster for the fleet tests (docs/fleet.md): Debian's server
//! binaries (`postgresql` package, found under /usr/lib/postgresql/*/bin, not on PATH),
//! `initdb` into a temporary directory, listening on a unix socket there and on 127.0.0.1
//! at a free port. PostgreSQL refuses to run as root: as root, every server command runs as
//! the package's `postgres` user (`runuser`), which owns the directory.
//!
//! Local (socket) connections are trusted, for `psql` in the tests; TCP ones need the
//! superuser's password, so the station's URL carries one (and the tests check it is never
//! printed).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{run_with_timeout, Output};

/// The superuser's password over TCP: a value the tests search the output for.
pub const PASSWORD: &str = "pg-s3cret-9f2c";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
    /// Serving TLS only (see [`Cluster::require_tls`]).
    tls: bool,
}

/// The newest installed server's bin directory, or `None` (Debian: `apt-get install
/// postgresql`).
pub fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // The tests run as root on CI (and here); `id -u` avoids an unsafe libc call.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Cluster {
    /// initdb and start. Panics (failing the test) when the server is not installed:
    /// scripts/test and .ci/run install it.
    pub fn start() -> Cluster {
        let bin = server_bin().expect(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: apt-get install postgresql",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            bin,
            dir,
            port: free_port(),
            running: false,
            tls: false,
        };
        let pwfile = cluster.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("pwfile");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let data = cluster.data();
        let out = cluster.server_command(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                pwfile.to_str().expect("utf-8"),
            ],
        );
        assert!(out.success(), "initdb failed: {}", out.combined());
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one of the server's programs, as `postgres` when the test runs as root.
    fn server_command(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(&path);
            cmd
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir(self.dir.path());
        run_with_timeout(cmd, START_TIMEOUT)
    }

    /// Starts the server (again, after [`stop`](Self::stop)) on the same port.
    pub fn start_server(&mut self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB -c max_connections=50",
            self.port,
            self.socket_dir().display()
        );
        if self.tls {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let out = self.server_command(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-o",
                &options,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.success(),
            "pg_ctl start failed: {}\n{}",
            out.combined(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Restarts the server with TLS (this certificate and key, PEM) and lets TCP clients in
    /// over TLS only (`hostssl` in pg_hba.conf): a plain connection is refused.
    pub fn require_tls(&mut self, cert_pem: &str, key_pem: &str) {
        if self.running {
            self.stop();
        }
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert_pem).expect("server.crt");
        std::fs::write(data.join("server.key"), key_pem).expect("server.key");
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("pg_hba.conf");
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .arg(data.join("pg_hba.conf"))
                .status()
                .expect("chown");
            assert!(status.success(), "chown the TLS files to postgres");
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod server.key");
        self.tls = true;
        self.start_server();
    }

    /// Stops the server (fast: connections are cut, as in an outage).
    pub fn stop(&mut self) {
        let data = self.data();
        let out = self.server_command(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(out.success(), "pg_ctl stop failed: {}", out.combined());
        self.running = false;
    }

    /// `postgresql://postgres:<password>@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// `psql` over the socket (trusted), unaligned, tuples only: the rows, `|`-separated.
    pub fn psql(&self, database: &str, sql: &str) -> Output {
        let socket = self.socket_dir().to_str().expect("utf-8").to_string();
        let port = self.port.to_string();
        self.server_command(
            "psql",
            &[
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    /// Like [`psql`](Self::psql), failing the test on an error; the output's lines.
    pub fn query(&self, database: &str, sql: &str) -> Vec<String> {
        let out = self.psql(database, sql);
        assert!(out.success(), "psql {sql:?}: {}", out.combined());
        out.stdout.lines().map(str::to_string).collect()
    }

    pub fn create_database(&self, name: &str) {
        self.query("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// `pg_dump` of a database, data included: everything the database holds, as text.
    pub fn dump(&self, database: &str) -> String {
        let socket = self.socket_dir().to_str().expect("utf-8").to_string();
        let port = self.port.to_string();
        let out = self.server_command(
            "pg_dump",
            &["-h", &socket, "-p", &port, "-U", "postgres", "-d", database],
        );
        assert!(out.success(), "pg_dump: {}", out.combined());
        out.stdout
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self.server_command(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}
