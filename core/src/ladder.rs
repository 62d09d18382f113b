//! The output ladder as data (`pipelines/*.toml`) and the contract's sizing rules.

use serde::{Deserialize, Serialize};

/// The built-in ladder, the same file that ships in `pipelines/default.toml`.
pub const DEFAULT_LADDER: &str = include_str!("../../pipelines/default.toml");

/// A whole ladder definition.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ladder {
    /// Target segment length, seconds.
    pub segment_duration_s: u32,
    /// Fixed keyframe interval, seconds.
    pub keyframe_interval_s: u32,
    /// x264 speed preset name.
    pub x264_preset: String,
    /// VBV maxrate as a multiple of the bitrate.
    pub maxrate_factor: f64,
    /// VBV buffer size as a multiple of the bitrate.
    pub bufsize_factor: f64,
    /// Output frame rate when the source has none.
    pub fallback_fps: u32,
    /// Fixed part of an attempt's time limit, seconds.
    #[serde(default = "default_timeout_base_s")]
    pub timeout_base_s: f64,
    /// Seconds of time limit per second of source.
    #[serde(default = "default_timeout_per_media_s")]
    pub timeout_per_media_s: f64,
    /// Sources longer than this many seconds are encoded in chunks on several workers at
    /// once (0 turns chunking off).
    #[serde(default = "default_chunk_threshold_s")]
    pub chunk_threshold_s: f64,
    /// Length of a chunk, seconds; a whole multiple of `segment_duration_s`.
    #[serde(default = "default_chunk_s")]
    pub chunk_s: u32,
    /// How each rung's bitrate is spent: `fixed` (average bitrate) or `capped-crf`.
    #[serde(default)]
    pub rate_control: RateControl,
    /// x264 constant-quality level (CRF) of `capped-crf`, 0–51, lower is better; a rung may
    /// set its own.
    #[serde(default = "default_crf")]
    pub crf: u32,
    /// Audio encoding.
    pub audio: AudioSpec,
    /// Rungs, any order.
    pub rungs: Vec<Rung>,
}

/// How an encoder spends a rung's bits.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RateControl {
    /// Average bitrate at the rung's `video_bitrate`, VBV-capped: every picture costs the
    /// same, a still slide as much as a football match.
    #[default]
    Fixed,
    /// Constant quality at `crf`, with the rung's maxrate and bufsize as the VBV cap: a
    /// still slide costs what it needs, a hard picture never more than the fixed ladder.
    CappedCrf,
}

fn default_crf() -> u32 {
    20
}

fn default_chunk_threshold_s() -> f64 {
    180.0
}

fn default_chunk_s() -> u32 {
    60
}

fn default_timeout_base_s() -> f64 {
    600.0
}

fn default_timeout_per_media_s() -> f64 {
    4.0
}

impl Ladder {
    /// How long one attempt on a source of `duration_s` may run before it counts as stuck.
    pub fn attempt_timeout(&self, duration_s: f64) -> std::time::Duration {
        let s = self.timeout_base_s + self.timeout_per_media_s * duration_s.max(0.0);
        std::time::Duration::from_secs_f64(s.clamp(0.1, 7.0 * 86_400.0))
    }
}

/// Audio encoding settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioSpec {
    /// Bits per second.
    pub bitrate: u32,
    /// Channel count.
    pub channels: u32,
    /// Sample rate, Hz.
    pub rate: u32,
}

/// One rung as defined.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    /// Rendition name, e.g. `720p`.
    pub name: String,
    /// Short side of the picture, pixels.
    pub short_side: u32,
    /// Average video bitrate, bits per second (with `capped-crf`, only the VBV cap's base).
    pub video_bitrate: u32,
    /// This rung's CRF under `capped-crf` (the ladder's `crf` when absent).
    #[serde(default)]
    pub crf: Option<u32>,
}

/// A rendition planned for one source: exact even dimensions and rate control.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rendition {
    /// Name, e.g. `480p`; also the folder of its segments.
    pub name: String,
    /// Output width, even.
    pub width: u32,
    /// Output height, even.
    pub height: u32,
    /// Average video bitrate, bits per second.
    pub video_bitrate: u32,
    /// VBV peak rate, bits per second.
    pub maxrate: u32,
    /// VBV buffer, bits.
    pub bufsize: u32,
    /// Constant-quality level when the ladder is `capped-crf` (then `maxrate` is the cap).
    #[serde(default)]
    pub crf: Option<u32>,
}

/// Why a ladder file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LadderError {
    /// Not valid TOML for a ladder.
    #[error("invalid ladder file: {0}")]
    Parse(#[from] toml::de::Error),
    /// Parses but breaks a rule.
    #[error("invalid ladder: {0}")]
    Invalid(String),
}

impl Ladder {
    /// Parses and checks a ladder definition.
    pub fn parse(text: &str) -> Result<Self, LadderError> {
        let mut l: Ladder = toml::from_str(text)?;
        if l.rungs.is_empty() {
            return Err(LadderError::Invalid("at least one rung is needed".into()));
        }
        if l.keyframe_interval_s == 0 || !l.segment_duration_s.is_multiple_of(l.keyframe_interval_s)
        {
            return Err(LadderError::Invalid(
                "segment_duration_s must be a whole multiple of keyframe_interval_s".into(),
            ));
        }
        if l.chunk_threshold_s > 0.0
            && (l.chunk_s == 0 || !l.chunk_s.is_multiple_of(l.segment_duration_s))
        {
            return Err(LadderError::Invalid(
                "chunk_s must be a whole, non-zero multiple of segment_duration_s".into(),
            ));
        }
        if l.rungs
            .iter()
            .any(|r| r.short_side < 2 || !r.short_side.is_multiple_of(2))
        {
            return Err(LadderError::Invalid("every short_side must be even".into()));
        }
        if !(l.timeout_base_s >= 0.0 && l.timeout_per_media_s >= 0.0) {
            return Err(LadderError::Invalid(
                "timeout_base_s and timeout_per_media_s must not be negative".into(),
            ));
        }
        if l.fallback_fps == 0 {
            return Err(LadderError::Invalid("fallback_fps must be positive".into()));
        }
        // x264enc takes whole CRF values from 0 to 50.
        if l.crf > 50 || l.rungs.iter().any(|r| r.crf.is_some_and(|c| c > 50)) {
            return Err(LadderError::Invalid(
                "crf must be a whole number from 0 to 50".into(),
            ));
        }
        l.rungs.sort_by_key(|r| r.short_side);
        Ok(l)
    }

    /// The built-in default ladder.
    pub fn default_ladder() -> Self {
        Self::parse(DEFAULT_LADDER).expect("built-in ladder is valid")
    }

    /// Loads the ladder from a file, or the built-in one.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        match path {
            None => Ok(Self::default_ladder()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read ladder file {}: {e}", p.display()))?;
                Ok(Self::parse(&text)?)
            }
        }
    }

    /// The renditions for an upright `width`×`height` source: every rung not taller (by short
    /// side) than the source, or one rendition at the source's own even size when it is smaller
    /// than the lowest rung.
    pub fn renditions_for(&self, width: u32, height: u32) -> Vec<Rendition> {
        let short = width.min(height);
        let lowest = &self.rungs[0];
        if short < lowest.short_side {
            let (w, h) = (even_down(width), even_down(height));
            return vec![self.rendition(format!("{}p", w.min(h)), w, h, lowest)];
        }
        self.rungs
            .iter()
            .filter(|r| r.short_side <= short)
            .map(|r| {
                let long =
                    even_round(width.max(height) as f64 * r.short_side as f64 / short as f64);
                let (w, h) = if width >= height {
                    (long, r.short_side)
                } else {
                    (r.short_side, long)
                };
                self.rendition(r.name.clone(), w, h, r)
            })
            .collect()
    }

    fn rendition(&self, name: String, width: u32, height: u32, rung: &Rung) -> Rendition {
        let bitrate = rung.video_bitrate;
        Rendition {
            crf: (self.rate_control == RateControl::CappedCrf)
                .then(|| rung.crf.unwrap_or(self.crf)),
            name,
            width,
            height,
            video_bitrate: bitrate,
            maxrate: (bitrate as f64 * self.maxrate_factor).round() as u32,
            bufsize: (bitrate as f64 * self.bufsize_factor).round() as u32,
        }
    }
}

fn even_down(v: u32) -> u32 {
    (v & !1).max(2)
}

fn even_round(v: f64) -> u32 {
    (((v / 2.0).round() as u32) * 2).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(w: u32, h: u32) -> Vec<(String, u32, u32)> {
        Ladder::default_ladder()
            .renditions_for(w, h)
            .into_iter()
            .map(|r| (r.name, r.width, r.height))
            .collect()
    }

    fn s(n: &str, w: u32, h: u32) -> (String, u32, u32) {
        (n.to_string(), w, h)
    }

    #[test]
    fn contract_sizes() {
        assert_eq!(
            sizes(1920, 1080),
            vec![
                s("480p", 854, 480),
                s("720p", 1280, 720),
                s("1080p", 1920, 1080)
            ]
        );
        assert_eq!(
            sizes(1280, 720),
            vec![s("480p", 854, 480), s("720p", 1280, 720)]
        );
        assert_eq!(sizes(853, 479), vec![s("478p", 852, 478)]);
        assert_eq!(sizes(640, 360), vec![s("360p", 640, 360)]);
        assert_eq!(
            sizes(1440, 1080),
            vec![
                s("480p", 640, 480),
                s("720p", 960, 720),
                s("1080p", 1440, 1080)
            ]
        );
        assert_eq!(sizes(1080, 1920)[0], s("480p", 480, 854));
        assert_eq!(sizes(3840, 2160).len(), 3, "no rung above 1080p is defined");
    }

    #[test]
    fn defaults_match_contract() {
        let l = Ladder::default_ladder();
        let r = l.renditions_for(1920, 1080);
        assert_eq!(
            r.iter().map(|r| r.video_bitrate).collect::<Vec<_>>(),
            vec![1_400_000, 2_800_000, 5_000_000]
        );
        assert_eq!(r[0].maxrate, 1_498_000);
        assert_eq!(r[0].bufsize, 2_100_000);
        assert_eq!(
            (
                l.segment_duration_s,
                l.keyframe_interval_s,
                l.x264_preset.as_str()
            ),
            (6, 2, "veryfast")
        );
        assert_eq!(l.audio.bitrate, 128_000);
    }

    #[test]
    fn bad_ladders_are_refused() {
        let text = DEFAULT_LADDER.replace("segment_duration_s = 6", "segment_duration_s = 5");
        assert!(matches!(Ladder::parse(&text), Err(LadderError::Invalid(_))));
        assert!(Ladder::parse("rungs = []").is_err());
    }

    #[test]
    fn capped_crf_plans_quality_with_the_rung_cap() {
        let text = DEFAULT_LADDER
            .replace("rate_control = \"fixed\"", "rate_control = \"capped-crf\"")
            .replace("short_side = 1080\n", "short_side = 1080\ncrf = 22\n");
        let l = Ladder::parse(&text).unwrap();
        let r = l.renditions_for(1920, 1080);
        assert_eq!(
            r.iter().map(|r| r.crf).collect::<Vec<_>>(),
            [Some(20), Some(20), Some(22)]
        );
        assert_eq!(
            r[2].maxrate, 5_350_000,
            "the cap is the fixed ladder's maxrate"
        );
        let fixed = Ladder::default_ladder().renditions_for(1920, 1080);
        assert!(fixed.iter().all(|r| r.crf.is_none()));
        let bad = DEFAULT_LADDER.replace("crf = 20", "crf = 60");
        assert!(matches!(Ladder::parse(&bad), Err(LadderError::Invalid(_))));
    }
}
