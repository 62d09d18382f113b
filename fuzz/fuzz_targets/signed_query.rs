//! The signature query of playback URLs: a query the origin accepts renders and re-parses to
//! the same values, so a proxy and the origin cannot read different signatures.
#![no_main]

use lectern_wire::signed::QueryParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(q) = QueryParams::parse(Some(s)) else {
        return;
    };
    let rendered = q.to_query_string();
    let again = QueryParams::parse(Some(&rendered)).expect("a rendered query parses");
    for (a, b) in [(q.exp, again.exp), (q.kid, again.kid), (q.vw, again.vw), (q.sig, again.sig)] {
        assert_eq!(a.unwrap_or(""), b.unwrap_or(""), "{s:?} -> {rendered:?}");
    }
});
