//! WebVTT caption files, checked before they are stored and listed in a master playlist.

/// Parses a WebVTT timestamp (`hh:mm:ss.ttt` or `mm:ss.ttt`) into milliseconds.
fn timestamp_ms(s: &str) -> Option<u64> {
    let (hms, ms) = s.split_once('.')?;
    if ms.len() != 3 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Hours have two digits or more; beyond nine the value is nonsense for a lecture and could
    // overflow, so it is refused.
    let field = |p: &str, max_len: usize| {
        (p.len() >= 2 && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u64>().ok())
            .flatten()
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, m, sec) = match parts[..] {
        [h, m, s] => (field(h, 9)?, field(m, 2)?, field(s, 2)?),
        [m, s] => (0, field(m, 2)?, field(s, 2)?),
        _ => return None,
    };
    if m > 59 || sec > 59 {
        return None;
    }
    Some(((h * 60 + m) * 60 + sec) * 1000 + ms.parse::<u64>().ok()?)
}

/// Checks a WebVTT file: the signature line, then cues whose timing lines parse with
/// start ≤ end. Returns the number of cues, or what is wrong and on which line.
pub fn validate(text: &str) -> Result<usize, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, first))
            if first == "WEBVTT"
                || first.starts_with("WEBVTT ")
                || first.starts_with("WEBVTT\t") => {}
        _ => return Err("line 1: a WebVTT file starts with `WEBVTT`".into()),
    }
    let mut cues = 0;
    for (i, line) in lines {
        if !line.contains("-->") {
            continue;
        }
        let mut it = line.split_whitespace();
        let (start, arrow, end) = (it.next(), it.next(), it.next());
        let (Some(a), Some("-->"), Some(b)) = (start, arrow, end) else {
            return Err(format!("line {}: expected `start --> end`", i + 1));
        };
        let (Some(a), Some(b)) = (timestamp_ms(a), timestamp_ms(b)) else {
            return Err(format!("line {}: timestamps look like 00:01:02.500", i + 1));
        };
        if b < a {
            return Err(format!("line {}: the cue ends before it starts", i + 1));
        }
        cues += 1;
    }
    Ok(cues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_are_counted_and_timestamps_bounded() {
        let ok = "WEBVTT\n\n00:01.000 --> 00:02.500\nHello\n\n01:00:00.000 --> 01:00:01.000 align:start\nBye\n";
        assert_eq!(validate(ok), Ok(2));
        assert_eq!(timestamp_ms("01:02:03.004"), Some(3_723_004));
        assert!(validate("WEBVTT\n\n99999999999999999999:00:00.000 --> 00:01.000\n").is_err());
        assert!(validate("WEBVTT\n\n00:02.000 --> 00:01.000\n").is_err());
        assert!(validate("WEBVTT\n\n00:60.000 --> 00:61.000\n").is_err());
        assert!(validate("NOT VTT\n").is_err());
        assert_eq!(validate("\u{feff}WEBVTT - a title\n"), Ok(0));
        assert!(validate("1\n00:00:01,000 --> 00:00:02,000\nSRT, not VTT\n").is_err());
        assert!(
            validate("WEBVTT\n\n00:00:05.000 --> 00:00:01.000\nbackwards\n")
                .unwrap_err()
                .contains("line 3")
        );
        assert!(
            validate("WEBVTT\n\n00:00:01.000 -> 00:00:02.000\n").is_ok(),
            "no arrow: not a cue line"
        );
    }
}
