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
//! - **deleted**: the store file removed under the gateway, alone and
//!   shared by two processes: written back and switched to with no restart
//!   (no write refused); and replaced by another store, which is refused.
//!
//! Full and read-only: an admin write answers 503 `store_unavailable` with `Retry-After`
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
use scopegate_suite::fleet::{FleetSpec, Instance, Mocks};
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
    metric(
        i,
        &format!("scopegate_store_errors_total{{kind=\"{kind}\"}}"),
    )
}

fn metric(i: &Instance, series: &str) -> u64 {
    let metrics = Request::new("GET", "/metrics").send(i.admin).text();
    let line = format!("{series} ");
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

/// A 4 MiB tmpfs mounted at `work/mnt`, and a gateway set up with its store
/// file there.
fn on_small_tmpfs(work: &Path) -> (Mount, Setup) {
    let mnt = work.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Mount::tmpfs(&mnt, "4m").unwrap();
    let s = Setup::new(work, mnt.join("keys.db"));
    (mount, s)
}

/// Fills the filesystem of `dir` to the last byte with one file, returned.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
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
    let (mount, s) = on_small_tmpfs(work.path());
    let mut gw = s.start();
    let (live_id, live, revoked) = populate(&gw);
    let before = version(&gw);

    let filler = fill(&mount.dir);
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
fn a_store_file_removed_on_a_full_disk_is_refused_until_space_is_freed_then_written_back() {
    need_mounts!();
    let work = tempfile::tempdir().unwrap();
    let (mount, s) = on_small_tmpfs(work.path());
    let mut gw = s.start();
    let (_, live, revoked) = populate(&gw);
    let before = version(&gw);
    let filler = fill(&mount.dir);

    // Removed with no room for the copy: writes refused, saying so.
    std::fs::remove_file(&s.store).unwrap();
    let message = assert_refused_cleanly(
        &s,
        &gw,
        "deleted",
        &live,
        &revoked,
        &["was removed", "writing its data back failed", "free space"],
    );
    eprintln!("removed on a full disk: {message}");
    assert!(!s.store.exists(), "a partial copy at the path");
    let leftovers: Vec<_> = std::fs::read_dir(&mount.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("restore"))
        .collect();
    assert!(leftovers.is_empty(), "temporary copies left: {leftovers:?}");

    // Space freed: the next write writes the data back and succeeds.
    std::fs::remove_file(&filler).unwrap();
    let (took, created) = first_success("after freeing space", || create_key(&gw, "after"));
    eprintln!("removed on a full disk: first successful write {took:?} after the space was freed");
    assert!(s.store.exists());
    assert_eq!(version(&gw), before + 1);
    let new = created.json()["key"].as_str().unwrap().to_string();
    gw.restart();
    assert_eq!(version(&gw), before + 1);
    assert_eq!(through(&s, &gw, &new), (200, true));
    assert_eq!(through(&s, &gw, &live), (200, true));
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

/// Waits (up to 5 s) until `cond` holds: how long it took.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn a_store_file_removed_under_the_gateway_is_written_back_and_used_without_a_restart() {
    let _serial = serial();
    // No mount needed: any directory will do.
    let work = tempfile::tempdir().unwrap();
    let s = Setup::new(work.path(), work.path().join("keys.db"));
    let mut gw = s.start();
    let (_, live, revoked) = populate(&gw);
    let before = version(&gw);
    let written_back = "was removed while this process had it open: wrote the data it held";

    // Removed, and an admin write comes first: it writes the data back,
    // switches to the copy and succeeds.
    std::fs::remove_file(&s.store).unwrap();
    let first = create_key(&gw, "right-after-the-removal");
    ok(&first);
    assert!(s.store.exists(), "the data was not written back");
    assert_eq!(version(&gw), before + 1);
    let first = first.json()["key"].as_str().unwrap().to_string();
    assert_eq!(through(&s, &gw, &first), (200, true));
    assert_eq!(through(&s, &gw, &live), (200, true));
    assert_eq!(through(&s, &gw, &revoked).0, 401);
    // The removed file's WAL was moved aside, not replayed into the copy.
    let mut wal = s.store.clone().into_os_string();
    wal.push("-wal.removed");
    assert!(
        Path::new(&wal).exists(),
        "the removed file's WAL was not set aside"
    );
    // Once the follower's connection to the removed file is closed too (the
    // last one to it), a write must still survive a SIGKILL: closing it must
    // not checkpoint or delete `keys.db-wal`, which is now the copy's.
    wait_for("the follower reopens its watcher on the copy", || {
        s.log().contains("lost the store's change notifications")
            && occurrences(&s.log(), written_back) == 1
    });
    let second = create_key(&gw, "after-the-switch");
    ok(&second);
    let second = second.json()["key"].as_str().unwrap().to_string();

    // Removed again, with no write coming: the follower writes it back
    // within its poll interval, so the data is safe before any write.
    std::fs::remove_file(&s.store).unwrap();
    let took = wait_for("the follower writes the data back", || {
        s.store.exists() && occurrences(&s.log(), written_back) == 2
    });
    eprintln!("removed store file: written back by the follower after {took:?}");
    assert_eq!(version(&gw), before + 2);
    assert_eq!(metric(&gw, "scopegate_store_file_switches_total"), 2);
    assert_eq!(store_errors(&gw, "deleted"), 0, "a write was refused");

    // SIGKILL: every change is in the file at the path.
    gw.restart();
    assert_eq!(version(&gw), before + 2);
    for secret in [&first, &second, &live] {
        assert_eq!(through(&s, &gw, secret), (200, true));
    }
    assert_eq!(through(&s, &gw, &revoked).0, 401);
    ok(&create_key(&gw, "after-the-restart"));
    assert_eq!(version(&gw), before + 3);
    let log = s.log();
    for secret in [&first, &second, &live, &revoked] {
        assert!(!log.contains(secret.as_str()), "a key in the log");
    }
}

#[test]
fn processes_sharing_a_removed_store_file_agree_on_the_copy_one_writes_back() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("keys.db");
    // Follows fast and fails closed soon.
    let mocks = Mocks::spawn();
    let spec = FleetSpec::new(store.display().to_string(), &mocks, 50, 500);
    let logs = [work.path().join("a.log"), work.path().join("b.log")];
    let mut a = Instance::start_logged(&spec, work.path(), "a", Some(logs[0].clone()));
    let mut b = Instance::start_logged(&spec, work.path(), "b", Some(logs[1].clone()));
    let log = |n: usize| std::fs::read_to_string(&logs[n]).unwrap_or_default();
    let (_, live, revoked) = populate(&a);
    let admitted = |i: &Instance, secret: &str| {
        i.send(Request::new("GET", &format!("/domains/{DOMAIN}")).bearer(secret))
            .status
    };
    wait_for("b follows a", || admitted(&b, &live) == 200);
    let before = version(&a);

    // Removed: each follower notices; one writes the data back, the other
    // finds that copy at the path, sees its log continue its own, and
    // switches to it too.
    std::fs::remove_file(&store).unwrap();
    let took = wait_for("both switch to the copy", || {
        (0..2).all(|n| log(n).contains("switched to it"))
    });
    eprintln!("shared removed store file: both processes on the copy after {took:?}");
    let (la, lb) = (log(0), log(1));
    assert!(
        la.contains("wrote the data it held") != lb.contains("wrote the data it held"),
        "exactly one process writes the data back:\n{la}\n{lb}"
    );
    for i in [&a, &b] {
        assert_eq!(metric(i, "scopegate_store_file_switches_total"), 1);
    }
    assert!(store.exists());
    // Both follow the copy, both directions, no restart.
    let r = create_key(&b, "through-b");
    ok(&r);
    let via_b = r.json()["key"].as_str().unwrap().to_string();
    wait_for("a sees b's key", || admitted(&a, &via_b) == 200);
    let r = create_key(&a, "through-a");
    ok(&r);
    let via_a = r.json()["key"].as_str().unwrap().to_string();
    wait_for("b sees a's key", || admitted(&b, &via_a) == 200);
    for i in [&a, &b] {
        assert_eq!(version(i), before + 2);
        assert_eq!(admitted(i, &live), 200);
        assert_eq!(admitted(i, &revoked), 401);
        assert_eq!(Request::new("GET", "/readyz").send(i.admin).status, 200);
    }

    // SIGKILL both, start both: every change is in the file at the path.
    a.kill();
    b.kill();
    a.restart();
    b.restart();
    for i in [&a, &b] {
        assert_eq!(version(i), before + 2);
        assert_eq!(admitted(i, &via_a), 200);
        assert_eq!(admitted(i, &via_b), 200);
        assert_eq!(admitted(i, &revoked), 401);
    }
}

#[test]
fn a_store_file_replaced_by_another_store_is_refused_and_the_gateway_fails_closed() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("keys.db");
    // Follows fast and fails closed soon.
    let mocks = Mocks::spawn();
    let spec = FleetSpec::new(store.display().to_string(), &mocks, 50, 500);
    let gw = Instance::start(&spec, work.path(), "gw");
    let (_, live, _) = populate(&gw);
    let before = version(&gw);
    // Another store (its log does not hold this one's changes) renamed over
    // the path: an old backup, or the wrong file.
    let other = work.path().join("other.db");
    drop(scopegate_keystore::SqliteStore::open(&other).unwrap());
    std::fs::rename(&other, &store).unwrap();

    // This process's WAL is beside the new file, and SQLite would read it
    // as the new file's.
    let r = create_key(&gw, "refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_unavailable");
    assert!(
        r.text().contains("was replaced by another file") && r.text().contains("is this process's"),
        "{}",
        r.text()
    );
    // Without it, the new file's change log does not hold this one's changes.
    for suffix in ["-wal", "-shm"] {
        let mut file = store.clone().into_os_string();
        file.push(suffix);
        std::fs::remove_file(file).unwrap();
    }
    let r = create_key(&gw, "refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("does not continue this one's"),
        "{}",
        r.text()
    );
    assert_eq!(version(&gw), before);
    // Changes committed there would never reach it: it stops confirming its
    // snapshot and fails closed.
    let took = wait_for("the gateway fails closed", || {
        gw.send(Request::new("GET", &format!("/domains/{DOMAIN}")).bearer(&live))
            .status
            == 503
    });
    eprintln!("store file replaced by another store: failed closed after {took:?}");
    assert_eq!(Request::new("GET", "/readyz").send(gw.admin).status, 503);

    // As the refusal says: moving that file away gets the data this process
    // holds written back, and it serves and takes writes again.
    std::fs::rename(&store, work.path().join("moved-away.db")).unwrap();
    let took = wait_for("the gateway serves again", || {
        gw.send(Request::new("GET", &format!("/domains/{DOMAIN}")).bearer(&live))
            .status
            == 200
    });
    eprintln!("foreign store moved away: serving again after {took:?}");
    assert_eq!(version(&gw), before);
    ok(&create_key(&gw, "after-moving-it-away"));
    assert_eq!(version(&gw), before + 1);
    assert_eq!(Request::new("GET", "/readyz").send(gw.admin).status, 200);
}

#[test]
fn a_store_a_newer_scopegate_migrated_refuses_admin_writes_with_store_upgraded() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let s = Setup::new(work.path(), work.path().join("keys.db"));
    let gw = s.start();
    let (_, live, revoked) = populate(&gw);
    let before = version(&gw);
    // A newer scopegate migrates the file one step past this one.
    let raw = rusqlite::Connection::open(&s.store).unwrap();
    let known: i64 = raw
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    raw.pragma_update(None, "user_version", known + 1).unwrap();
    drop(raw);

    let r = create_key(&gw, "refused");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error_code(), "store_upgraded", "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("upgrade this instance"), "{}", r.text());
    assert_eq!(version(&gw), before);
    assert_eq!(store_errors(&gw, "upgraded"), 1);
    // Nothing new to misread: what it holds is still enforced.
    assert_eq!(through(&s, &gw, &live), (200, true));
    assert_eq!(through(&s, &gw, &revoked).0, 401);
}
