//! Fuzz target `mailbox`: see `scopegate_gateway::tools::invariants::mailbox`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scopegate_gateway::tools::invariants::mailbox(data);
});
