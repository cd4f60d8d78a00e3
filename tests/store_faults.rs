//! Store faults under a running `scopegate serve` (SQLite), on real
//! filesystems the test mounts itself (so it needs root; without it every
//! test says so loudly and skips):
//!
//! - **full**: a 4 MiB tmpfs filled by a dummy file;
//! - **read-only**: an ext4 image on a loop device that the kernel turns
//!   read-only on an error (`errors=remount-ro` and ext4's
//!   `trigger_fs_error`), as it does when a disk fails. Linux refuses
//!   `mount -o remount,ro` while files are open for writing, and a
//!   filesystem turned read-only on an error stays so until unmounted, so
//!   its recovery is a repair and a restart;
//! - **deleted**: the store file removed under the gateway; and under two
//!   processes sharing it, where the one that did not write the copy back
//!   fails closed once the copy is there.
//!
//! Each: an admin write answers 503 `store_unavailable` with `Retry-After`
//! and a message naming the file and the cause; the store's version and the
//! admin reads are unchanged; a key created before the fault is still
//! admitted (the upstream sees the request) and one revoked before is still
//! refused; `scopegate_store_errors_total{kind}` counts it; the log says it
//! with no key material. After recovery the same write succeeds and
//! survives a restart; usage counted during the fault is written then.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use scopegate_gateway::mock::MockUpstream;
use scopegate_suite::fleet::{FleetSpec, Instance};
use scopegate_suite::gateway::free_port;
use scopegate_suite::http::{Request, Response};
use serde_json::json;

const ORG: &str = "acme";
const DOMAIN: &str = "acme.example";
const OWNER: &str = "owner@acme.example";

/// One test at a time: each starts processes and mounts, and on a shared
/// 2-core machine they would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why these tests cannot run here, if they cannot.
fn cannot_mount() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some(format!(
            "not root (uid {}): mounting a small filesystem needs root",
            uid.unwrap_or_default()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    match Mount::tmpfs(dir.path(), "64k") {
        Ok(_) => None,
        Err(e) => Some(format!("mounting a tmpfs failed: {e}")),
    }
}

/// Skips the test, loudly, when it cannot mount.
macro_rules! need_mounts {
    () => {
        let _serial = serial();
        if let Some(why) = cannot_mount() {
            eprintln!("\n*** SKIPPED store fault test: {why} ***\n");
            return;
        }
    };
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A filesystem mounted for one test; unmounted on drop (after the
/// instances using it, which are declared after it, are dropped).
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        let d = dir.to_str().unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", d],
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// An ext4 image (no journal) on a loop device, turned read-only by the
    /// kernel on the first error.
    fn ext4(image: &Path, dir: &Path) -> Result<Mount, String> {
        let img = image.to_str().unwrap();
        std::fs::File::create(image)
            .and_then(|f| f.set_len(16 << 20))
            .map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", "-O", "^has_journal", img])?;
        run(
            "mount",
            &["-o", "loop,errors=remount-ro", img, dir.to_str().unwrap()],
        )?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// The ext4 sysfs directory of this mount's device.
    fn ext4_sysfs(&self) -> PathBuf {
        let source = run(
            "findmnt",
            &["-n", "-o", "SOURCE", self.dir.to_str().unwrap()],
        )
        .unwrap();
        let dev = Path::new(source.trim()).file_name().unwrap().to_owned();
        Path::new("/sys/fs/ext4").join(dev)
    }

    fn unmount(&self) -> Result<String, String> {
        run("umount", &[self.dir.to_str().unwrap()])
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.unmount().is_err() {
            let _ = run("umount", &["-l", self.dir.to_str().unwrap()]);
        }
    }
}

struct Setup {
    /// Kept running for the routes that name it.
    _sending: MockUpstream,
    domains: MockUpstream,
    log: PathBuf,
    /// The store file.
    store: PathBuf,
    config: PathBuf,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Setup {
    fn new(work: &Path, store: PathBuf) -> Setup {
        let sending = MockUpstream::spawn("sending").expect("mock");
        let domains = MockUpstream::spawn("domains").expect("mock");
        let (proxy, admin) = (free_port(), free_port());
        let config = work.join("gw.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{proxy}\"\nadmin_listen = \"{admin}\"\nstore = \"{}\"\nthreads = 1\n\n\
                 [usage]\nflush_interval_ms = 100\n\n\
                 [log]\naccess_log = \"off\"\n\n\
                 [upstreams.sending]\nbackends = [\"{}\"]\n\n\
                 [upstreams.domains]\nbackends = [\"{}\"]\n",
                store.display(),
                sending.addr(),
                domains.addr()
            ),
        )
        .unwrap();
        Setup {
            _sending: sending,
            domains,
            log: work.join("gw.log"),
            store,
            config,
            proxy,
            admin,
        }
    }

    fn start(&self) -> Instance {
        Instance::start_config(
            self.config.clone(),
            self.proxy,
            self.admin,
            self.log.clone(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn ok(r: &Response) {
    assert!((200..300).contains(&r.status), "{}: {}", r.status, r.text());
}

fn create_key(i: &Instance, name: &str) -> Response {
    i.admin(
        Request::new("POST", &format!("/v1/orgs/{ORG}/keys"))
            .json(&json!({"user": OWNER, "org_wide": true, "name": name})),
    )
}

/// The organisation, its owner, a live key and a revoked one: (live id,
/// live secret, revoked secret).
fn populate(i: &Instance) -> (String, String, String) {
    ok(&i.admin(
        Request::new("PUT", &format!("/v1/orgs/{ORG}")).json(&json!({"domains": [DOMAIN]})),
    ));
    ok(&i.admin(
        Request::new("PUT", &format!("/v1/orgs/{ORG}/users/{OWNER}"))
            .json(&json!({"role": "owner"})),
    ));
    let live = create_key(i, "live");
    ok(&live);
    let revoked = create_key(i, "revoked");
    ok(&revoked);
    let (rid, rsecret) = (
        revoked.json()["id"].as_str().unwrap().to_string(),
        revoked.json()["key"].as_str().unwrap().to_string(),
    );
    ok(&i.admin(Request::new("DELETE", &format!("/v1/keys/{rid}"))));
    let v = live.json();
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
        rsecret,
    )
}

/// A proxied request with `secret`: its status, and whether the upstream saw it.
fn through(s: &Setup, i: &Instance, secret: &str) -> (u16, bool) {
    let before = s.domains.count();
    let r = i.send(Request::new("GET", &format!("/domains/{DOMAIN}")).bearer(secret));
    (r.status, s.domains.count() > before)
}

fn version(i: &Instance) -> u64 {
    i.status()["version"].as_u64().unwrap()
}

fn keys(i: &Instance) -> serde_json::Value {
    let r = i.admin(Request::new("GET", &format!("/v1/orgs/{ORG}/keys")));
    ok(&r);
    let mut v = r.json();
    // Usage changes with traffic; the keys themselves must not.
    for k in v["keys"].as_array_mut().unwrap() {
        let k = k.as_object_mut().unwrap();
        k.retain(|name, _| !["last_used_at", "requests", "grace_uses"].contains(&name.as_str()));
    }
    v
}

fn store_errors(i: &Instance, kind: &str) -> u64 {
    let metrics = Request::new("GET", "/metrics").send(i.admin).text();
    let line = format!("scopegate_store_errors_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in the metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn requests_of(i: &Instance, id: &str) -> u64 {
    let r = i.admin(Request::new("GET", &format!("/v1/keys/{id}")));
    ok(&r);
    r.json()["requests"].as_u64().unwrap()
}

/// What every fault must look like from outside while it lasts: the write
/// refused with a clear 503, nothing changed, the proxy serving the last
/// snapshot, the failure counted and logged without key material. Returns
/// the refused answer's message.
fn assert_refused_cleanly(
    s: &Setup,
    i: &Instance,
    kind: &str,
    live: &str,
    revoked: &str,
    says: &[&str],
) -> String {
    let (v, listed, counted) = (version(i), keys(i), store_errors(i, kind));
    let r = create_key(i, "during-the-fault");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_unavailable", "{}", r.text());
    assert!(r.header("retry-after").is_some(), "no Retry-After");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&s.store.display().to_string()),
        "{message}"
    );
    for word in says {
        assert!(message.contains(word), "{message:?} does not say {word:?}");
    }
    // A revocation refused too, and the key stays as it was.
    let live_id = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "live")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = i.admin(Request::new("DELETE", &format!("/v1/keys/{live_id}")));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(version(i), v, "a refused write moved the version");
    assert_eq!(keys(i), listed, "a refused write changed the keys");
    assert_eq!(through(s, i, live), (200, true), "a live key was refused");
    assert_eq!(through(s, i, revoked).0, 401, "a revoked key was admitted");
    assert!(
        !through(s, i, revoked).1,
        "a revoked key reached the upstream"
    );
    assert_eq!(store_errors(i, kind), counted + 2, "not counted as {kind}");
    let log = s.log();
    assert!(
        log.contains("admin change create_key failed") && log.contains(&message),
        "the log does not say it: {log}"
    );
    for secret in [live, revoked] {
        assert!(!log.contains(secret), "a key in the log");
    }
    assert!(!log.contains("sg_"), "key material in the log: {log}");
    message
}

/// Retries `write` until it succeeds (it should at once): how long it took.
fn first_success(what: &str, mut write: impl FnMut() -> Response) -> (Duration, Response) {
    let start = Instant::now();
    loop {
        let r = write();
        if (200..300).contains(&r.status) {
            return (start.elapsed(), r);
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: still {} after 5 s: {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_disk_refuses_writes_cleanly_and_recovers_once_space_is_freed() {
    need_mounts!();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::tmpfs(&mnt, "4m").unwrap();
    let s = Setup::new(work.path(), mnt.join("keys.db"));
    let mut gw = s.start();
    let (live_id, live, revoked) = populate(&gw);
    let before = version(&gw);

    // Fill the filesystem to the last byte.
    let filler = mount.dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let used_before = requests_of(&gw, &live_id);
    let message =
        assert_refused_cleanly(&s, &gw, "full", &live, &revoked, &["is full", "free space"]);
    eprintln!("full disk: {message}");
    // Usage counted meanwhile cannot be written: it is kept.
    for _ in 0..5 {
        assert_eq!(through(&s, &gw, &live), (200, true));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Request::new("GET", "/metrics")
        .send(gw.admin)
        .text()
        .lines()
        .any(|l| {
            l.starts_with("scopegate_usage_flushes_total{result=\"error\"}") && !l.ends_with(" 0")
        })
    {
        assert!(Instant::now() < deadline, "no failed usage flush");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(requests_of(&gw, &live_id) >= used_before + 6);

    // Free the space: the next write succeeds, no restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let (took, created) = first_success("after freeing space", || create_key(&gw, "after"));
    eprintln!(
        "full disk: first successful write {took:?} after the space was freed ({:?} including the request)",
        freed.elapsed()
    );
    assert_eq!(version(&gw), before + 1);
    let new = created.json()["key"].as_str().unwrap().to_string();
    assert_eq!(through(&s, &gw, &new), (200, true));
    let used = requests_of(&gw, &live_id);

    // Durable: after a restart (SIGKILL, so no shutdown flush) the change and
    // the usage counted during the fault are there.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Wait for a flush after the last request to land.
        std::thread::sleep(Duration::from_millis(150));
        gw.restart();
        if requests_of(&gw, &live_id) >= used || Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(version(&gw), before + 1);
    assert!(
        requests_of(&gw, &live_id) >= used_before + 6,
        "usage counted during the fault was lost"
    );
    assert_eq!(through(&s, &gw, &new), (200, true));
    assert_eq!(through(&s, &gw, &revoked).0, 401);
    drop(gw);
    drop(mount);
}

#[test]
fn a_filesystem_turned_read_only_refuses_writes_cleanly_and_loses_nothing() {
    need_mounts!();
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let image = work.path().join("fs.img");
    let mount = match Mount::ext4(&image, &mnt) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("\n*** SKIPPED read-only store test: no ext4 loop mount here: {e} ***\n");
            return;
        }
    };
    let s = Setup::new(work.path(), mnt.join("keys.db"));
    let mut gw = s.start();
    let (_, live, revoked) = populate(&gw);
    let before = version(&gw);

    // What a failing disk does: the kernel turns the filesystem read-only.
    std::fs::write(
        mount.ext4_sysfs().join("trigger_fs_error"),
        "store_faults test\n",
    )
    .unwrap();
    let message = assert_refused_cleanly(
        &s,
        &gw,
        "read_only",
        &live,
        &revoked,
        &["read-only", "make it writable"],
    );
    eprintln!("read-only filesystem: {message}");

    // Its recovery: stop the gateway, repair the filesystem, start again.
    gw.kill();
    let repaired = Instant::now();
    mount.unmount().unwrap();
    let fsck = Command::new("e2fsck")
        .args(["-fy", image.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(fsck.status.code().unwrap_or(8) < 4, "{fsck:?}");
    run(
        "mount",
        &[
            "-o",
            "loop,errors=remount-ro",
            image.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    )
    .unwrap();
    gw.restart();
    assert_eq!(version(&gw), before, "the store lost or gained a change");
    assert_eq!(through(&s, &gw, &live), (200, true));
    assert_eq!(through(&s, &gw, &revoked).0, 401);
    let (took, created) = first_success("after the repair", || create_key(&gw, "after"));
    eprintln!(
        "read-only filesystem: unmount, e2fsck, mount, restart and first write {:?} (write {took:?})",
        repaired.elapsed()
    );
    let new = created.json()["key"].as_str().unwrap().to_string();
    gw.restart();
    assert_eq!(version(&gw), before + 1);
    assert_eq!(through(&s, &gw, &new), (200, true));
    drop(gw);
    drop(mount);
}

#[test]
fn a_store_file_removed_under_the_gateway_is_written_back_and_nothing_is_lost() {
    let _serial = serial();
    // No mount needed: any directory will do.
    let work = tempfile::tempdir().unwrap();
    let s = Setup::new(work.path(), work.path().join("keys.db"));
    let mut gw = s.start();
    let (_, live, revoked) = populate(&gw);
    let before = version(&gw);

    std::fs::remove_file(&s.store).unwrap();
    let message = assert_refused_cleanly(
        &s,
        &gw,
        "deleted",
        &live,
        &revoked,
        &["was removed", &format!("version {before}"), "restart"],
    );
    eprintln!("removed store file: {message}");
    // The copy it wrote back holds everything, and is never an empty store.
    // (Read from a copy of it: opening the path itself while the removed
    // file's WAL lies beside it is what the gateway never does.)
    let inspect = work.path().join("inspect.db");
    std::fs::copy(&s.store, &inspect).unwrap();
    let copy = scopegate_keystore::SqliteStore::open(&inspect).unwrap();
    let mut copy: Box<dyn scopegate_keystore::Store> = Box::new(copy);
    assert_eq!(copy.version().unwrap().0, before);
    drop(copy);

    // SIGKILLed, it leaves the removed file's WAL beside the copy; the
    // restarted gateway moves it aside instead of replaying it into the copy.
    let restarted = Instant::now();
    gw.restart();
    let mut wal = s.store.clone().into_os_string();
    wal.push("-wal.removed");
    assert!(
        Path::new(&wal).exists(),
        "the removed file's WAL was not set aside"
    );
    assert_eq!(version(&gw), before);
    assert_eq!(through(&s, &gw, &live), (200, true));
    assert_eq!(through(&s, &gw, &revoked).0, 401);
    let (took, created) = first_success("after the restart", || create_key(&gw, "after"));
    eprintln!(
        "removed store file: restart and first write {:?} (write {took:?})",
        restarted.elapsed()
    );
    let new = created.json()["key"].as_str().unwrap().to_string();
    gw.restart();
    assert_eq!(version(&gw), before + 1);
    assert_eq!(through(&s, &gw, &new), (200, true));
    assert_eq!(through(&s, &gw, &revoked).0, 401);
}

#[test]
fn processes_sharing_a_removed_store_file_keep_agreeing_or_fail_closed_and_recover_on_restart() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("keys.db");
    let (sending, domains) = (
        MockUpstream::spawn("sending").unwrap(),
        MockUpstream::spawn("domains").unwrap(),
    );
    let spec = FleetSpec {
        store: store.display().to_string(),
        sending: sending.addr(),
        domains: domains.addr(),
        poll_interval_ms: 50,
        max_staleness_ms: 500,
        threads: 1,
    };
    let mut a = Instance::start(&spec, work.path(), "a");
    let mut b = Instance::start(&spec, work.path(), "b");
    let (_, live, revoked) = populate(&a);
    let admitted = |i: &Instance, secret: &str| {
        i.send(Request::new("GET", &format!("/domains/{DOMAIN}")).bearer(secret))
            .status
    };
    let wait = |what: &str, mut cond: Box<dyn FnMut() -> bool + '_>| {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    };
    wait("b follows a", Box::new(|| admitted(&b, &live) == 200));
    let before = version(&a);

    // Removed, nothing in its place: both still read the same (removed)
    // file, so both stay current and keep serving.
    std::fs::remove_file(&store).unwrap();
    std::thread::sleep(Duration::from_millis(3 * spec.max_staleness_ms));
    for i in [&a, &b] {
        assert_eq!(admitted(i, &live), 200);
        assert_eq!(admitted(i, &revoked), 401);
        assert!(i.status()["staleness_ms"].as_u64().unwrap() < spec.max_staleness_ms);
    }

    // A write through a: refused, and a writes the data back. b now sees
    // another file at the path, which it cannot follow: it fails closed.
    let r = create_key(&a, "refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("wrote the data it holds"), "{}", r.text());
    let failed_closed = wait("b fails closed", Box::new(|| admitted(&b, &live) == 503));
    eprintln!("shared file replaced: the other process failed closed after {failed_closed:?}");
    let r = b.send(Request::new("GET", &format!("/domains/{DOMAIN}")).bearer(&live));
    assert_eq!(r.error_code(), "store_unavailable", "{}", r.text());
    assert_eq!(Request::new("GET", "/readyz").send(b.admin).status, 503);
    let r = create_key(&b, "refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_unavailable");
    // a still holds every change there is: it keeps serving.
    assert_eq!(admitted(&a, &live), 200);
    assert_eq!(admitted(&a, &revoked), 401);
    assert_eq!(Request::new("GET", "/readyz").send(a.admin).status, 200);

    // Stop both, start both: the copy, with every change, for both.
    a.kill();
    b.kill();
    a.restart();
    b.restart();
    assert_eq!(version(&a), before);
    assert_eq!(version(&b), before);
    let created = create_key(&b, "after");
    ok(&created);
    let new = created.json()["key"].as_str().unwrap().to_string();
    wait("a follows b", Box::new(|| admitted(&a, &new) == 200));
    assert_eq!(admitted(&a, &revoked), 401);
    assert_eq!(admitted(&b, &live), 200);
}
