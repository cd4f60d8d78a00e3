//! Fuzz target `admin_body`: see `scopegate_gateway::tools::invariants::admin_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::admin_body(data);
});
