//! `protocol::parse_frame` with the server's 64 KiB limit: never panics, a
//! rejection echoes exactly the JSON's numeric `seq`. See `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::fuzz_frame_bytes(data);
});
