//! Throwaway PostgreSQL clusters for tests: `initdb` and `pg_ctl` from
//! Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`, the
//! highest version found), a temporary directory, a free port on 127.0.0.1,
//! trust authentication. No mock anywhere: tests talk to a real server.
//!
//! - [`PgCluster::start`]: a cluster of the test's own (to stop and start
//!   again, as an outage); dropping it stops it and removes its directory.
//! - [`fresh_database_url`]: a new, empty database for one test, on the
//!   server `SCOPEGATE_TEST_DATABASE_URL` names when set, else on one
//!   cluster shared by the whole test process (started on first use).
//!
//! `initdb` refuses to run as root: then every server command runs as the
//! `postgres` user (which the Debian package creates) through `runuser`,
//! and the directory is handed to that user first.
//!
//! Each cluster has a reaper: a shell that waits for this process's end of a
//! pipe to close, then stops the server and removes the directory. So even a
//! test process that panics, aborts or is killed leaves no server behind
//! (the shared cluster, a `static`, is never dropped: the reaper is what
//! stops it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Names the server tests use instead of starting their own (a database is
/// created on it for each test; the user needs `CREATEDB`).
pub const DATABASE_URL_ENV: &str = "SCOPEGATE_TEST_DATABASE_URL";

/// The directory holding `initdb` and `pg_ctl`: the highest version under
/// `/usr/lib/postgresql`, if any.
pub fn server_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(1) == Some("0");
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A name no other test (or test process) uses.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A PostgreSQL server in a temporary directory, on 127.0.0.1.
pub struct PgCluster {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
    /// Closing the pipe (drop, or this process ending) makes the reaper stop
    /// the server and remove `root`.
    reaper: Option<(Child, ChildStdin)>,
}

impl PgCluster {
    /// Initialises and starts a new cluster. Panics with the reason (and
    /// the server log) when that is impossible.
    pub fn start() -> PgCluster {
        let bin = server_bin_dir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server under /usr/lib/postgresql/*/bin: install Debian's \
                 `postgresql` package (`bash run.sh test` does), or set {DATABASE_URL_ENV}"
            )
        });
        let root = std::env::temp_dir().join(unique_name("scopegate-pg"));
        std::fs::create_dir(&root).expect("creating the cluster directory");
        let data = root.join("data");
        let as_postgres = running_as_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "chown postgres {} failed (is there a `postgres` user?)",
                root.display()
            );
        }
        let mut cluster = PgCluster {
            port: 0,
            reaper: None,
            running: false,
            bin,
            root,
            data,
            as_postgres,
        };
        cluster.reaper = Some(cluster.spawn_reaper());
        let out = cluster.server_command(
            "initdb",
            &[
                "-D".as_ref(),
                cluster.data.as_os_str(),
                "--auth=trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
                "--no-locale".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port may be taken by someone else before the server binds
        // it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL would not start: {last}");
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (user `postgres`, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database with a unique name; its URL.
    pub fn create_database(&self) -> String {
        create_database_at(&self.url("postgres"))
    }

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&mut self) {
        let data = self.data.clone();
        let out = self.server_command(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }

    /// Starts the stopped server again, on the same port and directory.
    pub fn start_again(&mut self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("PostgreSQL would not start again: {e}");
        }
    }

    /// Whether the server is up (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let log = self.root.join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.root.display()
        );
        let data = self.data.clone();
        let out = self.server_command(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log_text.lines().rev().take(15).collect();
        Err(format!(
            "pg_ctl start (port {}): {}{}\nserver log:\n{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// Runs a server program, as `postgres` when this process is root.
    fn server_command(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
    }

    fn spawn_reaper(&self) -> (Child, ChildStdin) {
        let stop = if self.as_postgres {
            r#"runuser -u postgres -- "$1" -D "$2" -m immediate -w stop"#
        } else {
            r#""$1" -D "$2" -m immediate -w stop"#
        };
        let script = format!(r#"cat >/dev/null; {stop} >/dev/null 2>&1; rm -rf "$3"; exit 0"#);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("reaper")
            .arg(self.bin.join("pg_ctl"))
            .arg(&self.data)
            .arg(&self.root)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cluster's reaper");
        let stdin = child.stdin.take().expect("piped stdin");
        (child, stdin)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some((mut child, mut stdin)) = self.reaper.take() {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Creates a database with a unique name on the server `admin_url` names
/// (connecting to the database in it) and answers the new database's URL.
pub fn create_database_at(admin_url: &str) -> String {
    let name = unique_name("sg_test");
    let mut client = postgres::Client::connect(admin_url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    with_database(admin_url, &name)
}

/// `url` with its database replaced by `db` (query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// The cluster shared by every test of this process that does not need one
/// of its own (started on first use, stopped by its reaper at exit).
pub fn shared_cluster() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(PgCluster::start)
}

/// A new empty database for one test: on `SCOPEGATE_TEST_DATABASE_URL`'s
/// server when set, else on [`shared_cluster`].
pub fn fresh_database_url() -> String {
    match std::env::var(DATABASE_URL_ENV) {
        Ok(url) if !url.is_empty() => create_database_at(&url),
        _ => shared_cluster().create_database(),
    }
}
