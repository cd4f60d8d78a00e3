//! Fuzz target `keys`: see `scopegate_gateway::tools::invariants::keys_in_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::keys_in_headers(data);
});
