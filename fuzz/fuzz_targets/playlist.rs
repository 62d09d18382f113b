//! Playlist writing, round-tripped through m3u8-rs: a caption track whose language and label
//! pass the checks comes back from the written master exactly as given (nothing a user sends
//! can end an attribute or a line), any stored master either is refused or rewrites into one
//! that parses with every variant pointed and signed, and the subtitle playlist always parses.
#![no_main]

use lectern_wire::playlist::{self, Subtitles};
use libfuzzer_sys::fuzz_target;

const MASTER: &[u8] = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aac\",NAME=\"audio\",DEFAULT=YES,AUTOSELECT=YES,URI=\"audio/index.m3u8\"\n#EXT-X-STREAM-INF:BANDWIDTH=1500000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=854x480,AUDIO=\"aac\"\n480p/index.m3u8\n";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            let Ok(s) = std::str::from_utf8(rest) else {
                return;
            };
            let (lang, label) = s.split_once('\n').unwrap_or(("en", s));
            if !playlist::language(lang) || playlist::label(label).is_err() {
                return;
            }
            let subs = [Subtitles { token: "t2", lang, label }];
            let out = playlist::rewrite_master(MASTER, "t1", "exp=1&kid=k&vw=v&sig=s", &subs)
                .expect("a valid track is always written");
            let pl = m3u8_rs::parse_master_playlist_res(&out).expect("the written master parses");
            let track = pl.alternatives.last().unwrap();
            assert_eq!(track.name, label, "{}", String::from_utf8_lossy(&out));
            assert_eq!(track.language.as_deref(), Some(lang));
            assert_eq!(pl.variants.len(), 1);
            assert_eq!(pl.variants[0].subtitles.as_deref(), Some("subs"));
        }
        1 => {
            if let Ok(out) = playlist::rewrite_master(rest, "t1", "exp=1", &[]) {
                let after =
                    m3u8_rs::parse_master_playlist_res(&out).expect("rewritten master parses");
                assert!(!after.variants.is_empty());
                for v in &after.variants {
                    assert!(v.uri.starts_with("t1/") && v.uri.ends_with("?exp=1"), "{}", v.uri);
                }
            }
        }
        _ => {
            if rest.len() >= 8 {
                let d = f64::from_le_bytes(rest[..8].try_into().unwrap());
                let pl = playlist::subtitle_playlist(d);
                let parsed = m3u8_rs::parse_media_playlist_res(pl.as_bytes())
                    .expect("the subtitle playlist parses");
                assert_eq!(parsed.segments.len(), 1);
                assert!(parsed.end_list);
            }
        }
    }
});
