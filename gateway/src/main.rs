//! The `scopegate` binary: everything lives in `scopegate_gateway::cli`.

fn main() {
    std::process::exit(scopegate_gateway::cli::main());
}
