//! The tus request headers: `Upload-Metadata`, `Upload-Concat`, `Upload-Checksum` and the
//! integer headers. Beyond not panicking: what is accepted is well-formed and round-trips.
#![no_main]

use lectern_wire::tus::{self, Concat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = tus::metadata(s) {
        assert!(m.len() <= tus::MAX_METADATA_KEYS);
        let again = tus::metadata(&tus::encode_metadata(&m)).expect("re-encoded metadata parses");
        assert_eq!(again, m);
    }
    if let Ok(Concat::Final(ids)) = tus::concat(s) {
        assert!(!ids.is_empty() && ids.len() <= tus::MAX_PARTIALS);
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "a partial named twice");
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }
    if let Some(n) = tus::number(s) {
        let digits = s.trim_matches(|c| c == ' ' || c == '\t');
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{s:?}");
        assert_eq!(digits.parse::<u128>().ok(), Some(n as u128));
    }
    if let Ok((algorithm, digest)) = tus::checksum(s) {
        assert_eq!(digest.len(), algorithm.digest_len());
    }
});
