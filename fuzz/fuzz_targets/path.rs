//! Fuzz target `path`: see `scopegate_gateway::tools::invariants::path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::path(data);
});
