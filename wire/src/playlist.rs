//! Playlist text written from what users send: the master a viewer gets (its URIs pointed at
//! an attempt's folder and signed, caption tracks added) and the one-entry subtitle playlist.
//! What users name here (a caption's language and label) is checked by the same module that
//! writes it, so nothing they send can end an attribute or a line.

use crate::Code;
use crate::Invalid;

/// A caption track as the master lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subtitles<'a> {
    /// Revision folder of the track.
    pub token: &'a str,
    /// BCP 47 language tag (checked by [`language`]).
    pub lang: &'a str,
    /// Display name (checked by [`label`]).
    pub label: &'a str,
}

/// True for a BCP 47-shaped tag (`en`, `pt-BR`, `zh-Hant`): safe in a URI and an attribute.
pub fn language(l: &str) -> bool {
    let mut parts = l.split('-');
    let first = parts.next().unwrap_or("");
    (2..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && l.len() <= 35
}

/// Checks a caption label: 1–100 characters with no quote or control character, which could
/// end its attribute or its line in the master playlist and inject tags.
pub fn label(l: &str) -> Result<(), Invalid> {
    if l.is_empty() || l.chars().count() > 100 || l.contains('"') || l.chars().any(char::is_control)
    {
        return Err(Invalid::new(
            Code::InvalidLabel,
            "label must be 1 to 100 characters without quotes, line breaks or control characters",
        ));
    }
    Ok(())
}

/// Points every URI of a stored master at `token`'s folder with `query` (the signature), and
/// lists `subs` as one `SUBTITLES` group that every variant names.
pub fn rewrite_master(
    raw: &[u8],
    token: &str,
    query: &str,
    subs: &[Subtitles<'_>],
) -> Result<Vec<u8>, Invalid> {
    let mut pl = m3u8_rs::parse_master_playlist_res(raw).map_err(|_| {
        Invalid::new(
            Code::InvalidPlaylist,
            "the stored master playlist does not parse",
        )
    })?;
    // The stored master is the packager's own; a URI that is not a plain relative path means
    // it is damaged, and rewriting it could only produce a playlist that reads differently.
    let plain = |u: &str| {
        !u.is_empty()
            && !u.starts_with('/')
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    };
    let uris = pl.variants.iter().map(|v| v.uri.as_str());
    let alts = pl.alternatives.iter().filter_map(|m| m.uri.as_deref());
    if pl.variants.is_empty() || !uris.chain(alts).all(plain) {
        return Err(Invalid::new(
            Code::InvalidPlaylist,
            "the stored master playlist names a URI that is not a relative path",
        ));
    }
    // Only the tags and attributes the packager writes are carried over, so the output is
    // canonical: m3u8-rs echoes unknown ones as it found them, broken or not.
    pl.unknown_tags.clear();
    let fix = |uri: &str| format!("{token}/{uri}?{query}");
    for v in &mut pl.variants {
        v.other_attributes = None;
        v.uri = fix(&v.uri);
        if !subs.is_empty() {
            v.subtitles = Some("subs".into());
        }
    }
    for m in &mut pl.alternatives {
        m.other_attributes = None;
        if let Some(u) = &m.uri {
            m.uri = Some(fix(u));
        }
    }
    for c in subs {
        if !language(c.lang) {
            return Err(Invalid::new(
                Code::InvalidLanguage,
                "not a BCP 47 language tag",
            ));
        }
        label(c.label)?;
        pl.alternatives.push(m3u8_rs::AlternativeMedia {
            media_type: m3u8_rs::AlternativeMediaType::Subtitles,
            uri: Some(format!("{}/subs-{}/index.m3u8?{query}", c.token, c.lang)),
            group_id: "subs".into(),
            language: Some(c.lang.to_string()),
            name: c.label.to_string(),
            default: false,
            autoselect: true,
            ..Default::default()
        });
    }
    let mut out = Vec::new();
    pl.write_to(&mut out)
        .map_err(|e| Invalid::new(Code::InvalidPlaylist, e.to_string()))?;
    Ok(out)
}

/// The one-segment subtitle playlist pointing at `captions.vtt`.
pub fn subtitle_playlist(duration_s: f64) -> String {
    let d = if duration_s.is_finite() {
        duration_s.clamp(0.001, 1e7)
    } else {
        0.001
    };
    let pl = m3u8_rs::MediaPlaylist {
        version: Some(7),
        target_duration: d.round().max(1.0) as u64,
        segments: vec![m3u8_rs::MediaSegment {
            uri: "captions.vtt".into(),
            duration: d as f32,
            ..Default::default()
        }],
        end_list: true,
        playlist_type: Some(m3u8_rs::MediaPlaylistType::Vod),
        ..Default::default()
    };
    let mut out = Vec::new();
    pl.write_to(&mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("m3u8-rs writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cannot_inject_tags() {
        assert!(label("English (CC)").is_ok());
        for bad in ["", "a\"b", "a\nb", "a\rb", "\u{85}"] {
            assert!(label(bad).is_err(), "{bad:?}");
        }
        assert!(language("en") && language("pt-BR") && language("zh-Hant"));
        for bad in ["english", "e", "en_US", "../x", "en US"] {
            assert!(!language(bad), "{bad:?}");
        }
        let pl = subtitle_playlist(61.2);
        assert!(pl.contains("#EXT-X-TARGETDURATION:61\n"), "{pl}");
        assert!(
            pl.contains("captions.vtt") && pl.contains("#EXT-X-ENDLIST"),
            "{pl}"
        );
    }

    #[test]
    fn the_master_is_pointed_signed_and_captioned() {
        let raw = b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-STREAM-INF:BANDWIDTH=1000,RESOLUTION=640x360\n360p/index.m3u8\n";
        let subs = [Subtitles {
            token: "t2",
            lang: "en",
            label: "English",
        }];
        let out = rewrite_master(raw, "t1", "exp=1&sig=x", &subs).unwrap();
        let pl = m3u8_rs::parse_master_playlist_res(&out).unwrap();
        assert_eq!(pl.variants[0].uri, "t1/360p/index.m3u8?exp=1&sig=x");
        assert_eq!(pl.alternatives[0].name, "English");
        assert_eq!(
            pl.alternatives[0].uri.as_deref(),
            Some("t2/subs-en/index.m3u8?exp=1&sig=x")
        );
    }
}
