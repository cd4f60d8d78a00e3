//! The `scopegate` binary: everything lives in `scopegate_gateway::cli`.

/// mimalloc instead of glibc's allocator: see README "Benchmarks" for what
/// it saved per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(scopegate_gateway::cli::main());
}
