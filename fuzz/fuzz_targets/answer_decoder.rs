//! The Command API decoder: any bytes as a text answer and, when they parse,
//! as a JSON answer, decoded with several origins. See `src/lib.rs` for the
//! invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::fuzz_answer_bytes(data);
});
