//! Fuzz target `head`: see `scopegate_gateway::tools::invariants::head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::head(data);
});
