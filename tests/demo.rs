//! `scopegate demo` end to end: the real binary, its real mock upstream
//! child processes, and the output a newcomer reads.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `scopegate ARGS`, killing it after `limit`; returns (exit code, stdout, stderr).
fn run_with_timeout(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(scopegate_suite::scopegate_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scopegate");
    // Read both pipes on threads so a full pipe never blocks the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for scopegate") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "scopegate {args:?} did not finish within {limit:?}; output so far:\n{}",
                out.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn demo_shows_admission_refusal_and_offboarding_against_real_upstreams() {
    let (code, out, err) = run_with_timeout(&["demo"], Duration::from_secs(60));
    assert_eq!(code, Some(0), "exit code; stdout:\n{out}\nstderr:\n{err}");
    let has = |needle: &str| {
        assert!(
            out.contains(needle),
            "output lacks {needle:?}:\n{out}\nstderr:\n{err}"
        );
    };
    let line_with = |parts: &[&str]| {
        assert!(
            out.lines().any(|l| parts.iter().all(|p| l.contains(p))),
            "no line contains all of {parts:?}:\n{out}"
        );
    };
    // The creation rule refusing: dev cannot mint a key for a read-only domain.
    line_with(&[
        "POST /v1/orgs/acme/keys",
        "\"domains\":[\"example.com\"]",
        "422 domain_not_writable",
    ]);
    // Invisible and nonexistent domains answer the same 404.
    line_with(&["GET /domains/example.com", "404 not_found"]);
    line_with(&["GET /domains/nonexistent.example", "404 not_found"]);
    has("identical: the gateway does not reveal that example.com exists");
    // A send from a domain the key cannot write, refused before the upstream.
    line_with(&["POST /email", "422 sender_not_allowed"]);
    // The same refusal in Postmark's envelope, from the second instance.
    line_with(&["response_format = \"postmark\"", "422 {\"ErrorCode\":400,"]);
    // Admitted requests are relayed from the upstream process itself.
    line_with(&[
        "upstream sending saw: POST /email",
        "org=acme",
        "user=dev@example.com",
        "scope=staging.example.com=read_write",
    ]);
    // Offboarding: deactivation, then dev's very next request is refused.
    line_with(&[
        "POST /v1/orgs/acme/users/dev@example.com/deactivate",
        "-> 200",
    ]);
    let after = out
        .split("/deactivate")
        .nth(1)
        .expect("the deactivation is shown");
    let next = after.lines().nth(1).expect("a request after deactivation");
    assert!(
        next.contains("dev ") && next.contains("401 invalid_api_key"),
        "dev's next request after deactivation: {next:?}"
    );
    // The summary compares admitted with what the upstreams printed.
    has("the upstreams saw exactly the admitted requests");
    has("every answer was the one the access model prescribes");
    assert!(!out.contains("!!"), "a surprise was reported:\n{out}");
    // No secret is ever printed without --keep-running.
    assert!(!out.contains("sg_"), "a key secret was printed:\n{out}");
    assert!(!err.contains("sg_"), "a key secret was printed:\n{err}");
    // Readable: short enough for a first look.
    assert!(out.lines().count() <= 80, "{} lines", out.lines().count());
}
