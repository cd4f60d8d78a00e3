//! Fuzz target `senders`: see `scopegate_gateway::tools::invariants::senders`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::senders(data);
});
