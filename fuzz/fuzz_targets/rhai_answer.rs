//! A handler's return value: JSON → a Rhai value (rhai's serde `to_dynamic`)
//! → `Answer::from_dynamic` → `answer::decode`. See `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::fuzz_rhai_bytes(data);
});
