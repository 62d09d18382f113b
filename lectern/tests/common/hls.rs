//! Walking HLS output: media playlists, their segments, and a whole master's tree.

use super::*;

/// Resolves a relative URI against a (possibly signed) URL.
pub fn join(base: &str, rel: &str) -> String {
    let dir = &base[..base.split('?').next().unwrap().rfind('/').unwrap() + 1];
    format!("{dir}{rel}")
}

pub struct Rendition {
    /// Init segment followed by every media segment.
    pub bytes: Vec<u8>,
    /// Highest segment bitrate.
    pub peak_bps: f64,
    /// Average bitrate.
    pub avg_bps: f64,
    /// Segment count.
    pub segments: usize,
    /// Each segment's EXTINF duration, seconds.
    pub durations: Vec<f32>,
}

/// Walks a media playlist: checks it and downloads init + segments.
pub async fn walk_media(app: &TestApp, url: &str) -> Rendition {
    let (status, headers, body) = fetch(app, url).await;
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let text = String::from_utf8(body.clone()).unwrap();
    for needle in [
        "#EXT-X-VERSION:7",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-ENDLIST",
        "#EXT-X-INDEPENDENT-SEGMENTS",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }
    let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
    let map = pl.segments[0]
        .map
        .as_ref()
        .expect("EXT-X-MAP on the first segment");
    let (s, h, init) = fetch(app, &join(url, &map.uri)).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "video/mp4");
    assert!(h["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(&init[4..8], b"ftyp");
    let mut all = init;
    let (mut peak, mut bits, mut secs) = (0f64, 0f64, 0f64);
    for seg in &pl.segments {
        assert!(
            seg.uri.ends_with(".m4s") && !seg.uri.contains('?'),
            "segments are unsigned: {}",
            seg.uri
        );
        assert!(seg.duration as u64 <= pl.target_duration);
        let (s, _, data) = fetch(app, &join(url, &seg.uri)).await;
        assert_eq!(s, 200);
        assert!(
            data.windows(4)
                .take(16)
                .any(|w| w == b"moof" || w == b"styp"),
            "segment is CMAF"
        );
        let b = data.len() as f64 * 8.0;
        peak = peak.max(b / seg.duration as f64);
        bits += b;
        secs += seg.duration as f64;
        all.extend_from_slice(&data);
    }
    Rendition {
        bytes: all,
        peak_bps: peak,
        avg_bps: bits / secs,
        segments: pl.segments.len(),
        durations: pl.segments.iter().map(|s| s.duration).collect(),
    }
}

/// One request of a player's walk: URL, status, `X-Cache-Status`.
#[derive(Debug)]
pub struct Hit {
    /// The URL.
    pub url: String,
    /// Its status.
    pub status: u16,
    /// `X-Cache-Status` (empty without a CDN).
    pub cache: String,
}

/// Fetches the master and everything it leads to (media playlists, init segments, media
/// segments, caption files), as a player that watches every rendition would.
pub async fn walk_tree(http: &reqwest::Client, master_url: &str) -> Vec<Hit> {
    let get = |url: String| async move {
        let r = http.get(&url).send().await.unwrap();
        let status = r.status().as_u16();
        let cache = r
            .headers()
            .get("x-cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = r.bytes().await.unwrap().to_vec();
        (Hit { url, status, cache }, body)
    };
    let mut hits = Vec::new();
    let (h, body) = get(master_url.to_string()).await;
    hits.push(h);
    let master = m3u8_rs::parse_master_playlist_res(&body).unwrap();
    let media: Vec<String> = master
        .variants
        .iter()
        .map(|v| v.uri.clone())
        .chain(master.alternatives.iter().filter_map(|a| a.uri.clone()))
        .map(|u| join(master_url, &u))
        .collect();
    for m in media {
        let (h, body) = get(m.clone()).await;
        hits.push(h);
        let pl = m3u8_rs::parse_media_playlist_res(&body).unwrap();
        let mut files: Vec<String> = pl
            .segments
            .iter()
            .filter_map(|s| s.map.as_ref().map(|m| m.uri.clone()))
            .collect();
        files.extend(pl.segments.iter().map(|s| s.uri.clone()));
        for f in files {
            hits.push(get(join(&m, &f)).await.0);
        }
    }
    hits
}

/// Whether a URL names a segment (or caption file) rather than a playlist.
pub fn is_segment(url: &str) -> bool {
    let path = url.split('?').next().unwrap();
    [".m4s", ".mp4", ".vtt"].iter().any(|e| path.ends_with(e))
}
