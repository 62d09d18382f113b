//! The `Range` header against an object size: whatever is accepted resolves to a non-empty
//! range inside the object, and nothing overflows.
#![no_main]

use lectern_wire::range::ByteRange;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap());
    let Ok(header) = std::str::from_utf8(&data[8..]) else {
        return;
    };
    let Some(Ok(r)) = ByteRange::parse_header(header) else {
        return;
    };
    if let ByteRange::Inclusive(a, b) = r {
        assert!(a <= b);
    }
    if let Ok(got) = r.resolve(size) {
        assert!(got.start < got.end && got.end <= size, "{header:?} of {size}: {got:?}");
    }
});
