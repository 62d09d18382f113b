//! The WebVTT validator: never panics (timestamps of any length), and counts at most one cue
//! per timing line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cues) = lectern_wire::webvtt::validate(s) {
        assert!(cues <= s.matches("-->").count());
    }
});
