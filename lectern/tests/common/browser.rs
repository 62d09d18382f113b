//! Playing a master playlist with hls.js in Debian's Chromium.

use super::*;

/// Plays `master_url` with hls.js in headless Chromium, from the page nginx serves at
/// `{page_base}/player/hls_page.html`; returns what the page saw.
pub fn play_in_chromium(
    page_base: &str,
    master_url: &str,
    min_played: f64,
    want_cues: bool,
) -> Value {
    play_in_chromium_at(page_base, master_url, min_played, want_cues, 1.0)
}

/// [`play_in_chromium`] at playback speed `rate`.
pub fn play_in_chromium_at(
    page_base: &str,
    master_url: &str,
    min_played: f64,
    want_cues: bool,
    rate: f64,
) -> Value {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let page = format!(
        "{page_base}/player/hls_page.html?rate={rate}&src={}",
        percent_encode(master_url)
    );
    let timeout_s = 40.0 + min_played / rate;
    let out = Command::new("node")
        .arg(clients.join("hlsplay.mjs"))
        .arg(&page)
        .arg(min_played.to_string())
        .arg(if want_cues { "1" } else { "0" })
        .arg(format!("{timeout_s:.0}"))
        .current_dir(&clients)
        .output()
        .expect("node is installed by scripts/test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "hlsplay.mjs failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("hlsplay.mjs printed no JSON ({e}): {stdout}"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
