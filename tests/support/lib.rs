//! Shared helpers for scopegate's black-box tests, benches and load tests:
//! an in-process gateway with mock upstreams, a raw HTTP client, the guide's
//! sample organisation, and synthetic key populations.

pub mod fleet;
pub mod gateway;
pub mod http;
pub mod pg;
pub mod population;
pub mod sample;
pub mod tls;

/// The `scopegate` binary of this build (for tests that start real
/// processes). `cargo test --workspace` builds it, because the gateway
/// package has integration tests of its own.
pub fn scopegate_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/scopegate
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("scopegate");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p scopegate-gateway`) first",
        bin.display()
    );
    bin
}
