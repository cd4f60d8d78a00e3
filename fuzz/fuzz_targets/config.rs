//! Fuzz target `config`: see `scopegate_gateway::tools::invariants::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::config(data);
});
