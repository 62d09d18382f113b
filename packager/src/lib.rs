//! The packager: takes CMAF init and media segments per track, writes them through the
//! object-store seam, measures their bitrates and writes the media and master playlists with
//! m3u8-rs. It knows nothing of GStreamer; the transcoder feeds it bytes.
//!
//! Layout under the attempt prefix: `master.m3u8`, and per track `{name}/init.mp4`,
//! `{name}/seg00001.m4s`…, `{name}/index.m3u8`. Audio is one separate rendition shared by every
//! video variant through an `EXT-X-MEDIA` group, so it is encoded and stored once.
//!
//! In live mode the attempt becomes playable while it is still encoding: once every track has
//! its first segment, `live.m3u8` (a master declaring the ladder's nominal rates, written once)
//! and `EVENT` media playlists appear, and each new segment is appended to its track's
//! playlist. [`Packager::finish`] turns the media playlists into `VOD` with `EXT-X-ENDLIST` at
//! the same URIs and writes `master.m3u8` with the measured bandwidths. Segments and init
//! segments are written once and never change.

pub mod cmaf;

use std::sync::Arc;

use bytes::Bytes;
use lectern_core::storage::{ObjectStore, StoreError};
use lectern_core::videos::RenditionInfo;
use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, Start, VariantStream,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The audio group id used in the master playlist.
pub const AUDIO_GROUP: &str = "aac";
pub use lectern_core::keys::{INIT_SEGMENT, LIVE_MASTER_PLAYLIST, MASTER_PLAYLIST, MEDIA_PLAYLIST};

/// What kind of track a rendition carries.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackKind {
    /// A video variant.
    Video {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Frames per second.
        fps: f64,
    },
    /// The shared audio rendition.
    Audio {
        /// Channel count.
        channels: u32,
    },
}

/// One output track.
#[derive(Debug, Clone)]
pub struct Track {
    /// Folder name, e.g. `720p` or `audio`.
    pub name: String,
    /// Video or audio.
    pub kind: TrackKind,
    /// RFC 6381 codec string, e.g. `avc1.640028` or `mp4a.40.2`; read from the init segment
    /// when not given.
    pub codec: Option<String>,
    /// Declared (peak, average) bits per second before any segment is measured: the ladder's
    /// maxrate and bitrate. Used by the master of an attempt that is still encoding.
    pub nominal_bps: (u64, u64),
}

/// Why packaging failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Writing to the object store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The input breaks an invariant (e.g. a segment before its init segment).
    #[error("packaging: {0}")]
    Invalid(String),
}

#[derive(Debug)]
struct TrackState {
    spec: Track,
    has_init: bool,
    /// SHA-256 of the init segment, hex: every chunk of a track must produce the same one.
    init_sha256: Option<String>,
    /// Ticks of the track's timescale that a chunk's fragments move by.
    shift_ticks: u64,
    segments: Vec<(String, f32, u64)>,
    /// Fragments waiting to be grouped into the next segment, and their duration.
    pending: Vec<Bytes>,
    pending_s: f64,
}

impl TrackState {
    fn peak_bps(&self) -> u64 {
        self.segments
            .iter()
            .filter(|(_, d, _)| *d > 0.0)
            .map(|(_, d, b)| (*b as f64 * 8.0 / *d as f64).ceil() as u64)
            .max()
            .unwrap_or(0)
    }

    fn average_bps(&self) -> u64 {
        let total: f64 = self.segments.iter().map(|(_, d, _)| *d as f64).sum();
        let bytes: u64 = self.segments.iter().map(|(_, _, b)| *b).sum();
        if total > 0.0 {
            (bytes as f64 * 8.0 / total).round() as u64
        } else {
            0
        }
    }
}

/// Packages one transcode attempt under one prefix.
#[derive(Debug)]
pub struct Packager {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    tracks: Vec<TrackState>,
    /// `Some(target duration)` when playlists are published while encoding.
    live: Option<u64>,
    playable: bool,
    /// Leading segments of one CMAF fragment each, then fragments per segment.
    grouping: (usize, usize),
    /// Where a chunk's output goes in the stitched stream; `None` for a whole source.
    placement: Option<Placement>,
}

/// Where one chunk's output sits in the stitched stream of its tracks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Number of the chunk's first segment file (1 for the first chunk).
    pub first_segment: usize,
    /// CMAF fragments of each track before the chunk: its sequence numbers continue from there.
    pub fragments_before: u32,
    /// Output frames before the chunk: its decode times move by their duration.
    pub frames_before: u64,
    /// Output frame rate (numerator, denominator).
    pub fps: (u32, u32),
    /// Whether this chunk stores the init segments (the first does; the others report their
    /// digests, which the stitch step compares).
    pub store_init: bool,
}

/// What one chunk produced for one track.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkTrack {
    /// Track (folder) name.
    pub name: String,
    /// SHA-256 of its init segment, hex.
    pub init_sha256: String,
    /// RFC 6381 codec string.
    pub codec: Option<String>,
    /// Its segments: file name, duration in seconds, bytes.
    pub segments: Vec<(String, f32, u64)>,
}

impl Packager {
    /// Starts packaging `tracks` under `prefix` (which must end with `/`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>, tracks: Vec<Track>) -> Self {
        let tracks = tracks
            .into_iter()
            .map(|spec| TrackState {
                spec,
                has_init: false,
                init_sha256: None,
                shift_ticks: 0,
                segments: Vec::new(),
                pending: Vec::new(),
                pending_s: 0.0,
            })
            .collect();
        Self {
            store,
            prefix: prefix.into(),
            tracks,
            live: None,
            playable: false,
            grouping: (1, 1),
            placement: None,
        }
    }

    /// Packages one chunk of a chunked attempt: its segments are numbered and retimed to sit
    /// at `placement` in the stitched stream, and [`Packager::finish_chunk`] reports them
    /// instead of writing playlists.
    pub fn chunk(mut self, placement: Placement) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Groups [`Packager::fragment`]s into segments: the first `lead` segments are one
    /// fragment each (short fragments at the start get a lecture playable soonest), then
    /// `rest` fragments make each segment (the target length).
    pub fn grouping(mut self, lead: usize, rest: usize) -> Self {
        self.grouping = (lead, rest.max(1));
        self
    }

    /// Takes the next CMAF fragment (`moof` + `mdat`) of a track; fragments become segments as
    /// [`Packager::grouping`] says. Returns true when this made the attempt playable.
    pub async fn fragment(
        &mut self,
        track: usize,
        data: Bytes,
        duration_s: f64,
    ) -> Result<bool, PackError> {
        let (lead, rest) = self.grouping;
        let t = self.track(track)?;
        t.pending.push(data);
        t.pending_s += duration_s;
        let need = if t.segments.len() < lead { 1 } else { rest };
        if t.pending.len() < need {
            return Ok(false);
        }
        self.flush_pending(track).await
    }

    async fn flush_pending(&mut self, track: usize) -> Result<bool, PackError> {
        let t = self.track(track)?;
        if t.pending.is_empty() {
            return Ok(false);
        }
        let frags = std::mem::take(&mut t.pending);
        let secs = std::mem::take(&mut t.pending_s);
        let data = if frags.len() == 1 {
            frags.into_iter().next().expect("one fragment")
        } else {
            frags.concat().into()
        };
        self.segment(track, data, secs).await
    }

    /// Publishes `EVENT` playlists while encoding, with `target_duration_s` (the ladder's
    /// segment length) as their fixed `EXT-X-TARGETDURATION`.
    pub fn live(mut self, target_duration_s: u32) -> Self {
        self.live = Some(target_duration_s.max(1) as u64);
        self
    }

    /// Whether the live playlists exist (every track has a segment).
    pub fn is_playable(&self) -> bool {
        self.playable
    }

    /// The prefix everything is written under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn track(&mut self, i: usize) -> Result<&mut TrackState, PackError> {
        self.tracks
            .get_mut(i)
            .ok_or_else(|| PackError::Invalid(format!("no track {i}")))
    }

    fn key(&self, i: usize, file: &str) -> Result<String, PackError> {
        let t = self
            .tracks
            .get(i)
            .ok_or_else(|| PackError::Invalid(format!("no track {i}")))?;
        Ok(format!("{}{}/{}", self.prefix, t.spec.name, file))
    }

    /// Sets a track's codec string from the stream, unless the init segment already gave it:
    /// the live and the final master then name the codec identically.
    pub fn set_codec(&mut self, track: usize, codec: String) -> Result<(), PackError> {
        let t = self.track(track)?;
        if t.spec.codec.is_none() {
            t.spec.codec = Some(codec);
        }
        Ok(())
    }

    /// Stores a track's init segment (`ftyp` + `moov`).
    pub async fn init(&mut self, track: usize, data: Bytes) -> Result<(), PackError> {
        let key = self.key(track, INIT_SEGMENT)?;
        let codec = codec_from_init(&data);
        let data: Bytes = match self.placement {
            None => data,
            Some(_) => {
                let mut d = data.to_vec();
                cmaf::clear_times(&mut d).map_err(PackError::Invalid)?;
                d.into()
            }
        };
        let digest = hex_sha256(&data);
        let mut shift = 0;
        if let Some(p) = self.placement {
            let ts = cmaf::timescale(&data)
                .ok_or_else(|| PackError::Invalid("an init segment without a timescale".into()))?;
            let (n, d) = (p.fps.0.max(1) as u128, p.fps.1.max(1) as u128);
            let ticks = p.frames_before as u128 * ts as u128 * d;
            if !ticks.is_multiple_of(n) {
                return Err(PackError::Invalid(format!(
                    "frame {} does not fall on a tick of timescale {ts}",
                    p.frames_before
                )));
            }
            shift = (ticks / n) as u64;
        }
        if self.placement.is_none_or(|p| p.store_init) {
            self.store.put_bytes(&key, data).await?;
        }
        let t = self.track(track)?;
        t.has_init = true;
        t.init_sha256 = Some(digest);
        t.shift_ticks = shift;
        if t.spec.codec.is_none() {
            t.spec.codec = codec;
        }
        Ok(())
    }

    /// Stores the next media segment (`moof` + `mdat`) of a track. In live mode, returns true
    /// when this segment made the attempt playable (the caller then announces it).
    pub async fn segment(
        &mut self,
        track: usize,
        data: Bytes,
        duration_s: f64,
    ) -> Result<bool, PackError> {
        let placement = self.placement;
        let t = self.track(track)?;
        if !t.has_init {
            return Err(PackError::Invalid(format!(
                "segment for {} before its init segment",
                t.spec.name
            )));
        }
        let (uri, data) = match placement {
            None => (format!("seg{:05}.m4s", t.segments.len() + 1), data),
            Some(p) => {
                let mut moved = data.to_vec();
                cmaf::retime(&mut moved, t.shift_ticks, p.fragments_before)
                    .map_err(PackError::Invalid)?;
                (
                    format!("seg{:05}.m4s", p.first_segment + t.segments.len()),
                    moved.into(),
                )
            }
        };
        let key = self.key(track, &uri)?;
        let len = data.len() as u64;
        self.store.put_bytes(&key, data).await?;
        self.track(track)?
            .segments
            .push((uri, duration_s as f32, len));
        let Some(target) = self.live else {
            return Ok(false);
        };
        if self.playable {
            // The segment is stored before the playlist names it, so a player never sees a
            // URI that is not there yet.
            self.write_media(track, Some(target)).await?;
            return Ok(false);
        }
        if self.tracks.iter().any(|t| t.segments.is_empty()) {
            return Ok(false);
        }
        for i in 0..self.tracks.len() {
            self.write_media(i, Some(target)).await?;
        }
        self.write_live_master().await?;
        self.playable = true;
        Ok(true)
    }

    /// The master of an attempt that is still encoding: the ladder's nominal rates.
    async fn write_live_master(&self) -> Result<(), PackError> {
        let (master, _) = master_playlist(&self.tracks, true);
        self.store
            .put_bytes(
                &format!("{}{LIVE_MASTER_PLAYLIST}", self.prefix),
                master.into(),
            )
            .await?;
        Ok(())
    }

    async fn write_media(&self, track: usize, live_target: Option<u64>) -> Result<(), PackError> {
        let t = &self.tracks[track];
        let body = media_playlist(t, live_target);
        self.store
            .put_bytes(
                &format!("{}{}/{MEDIA_PLAYLIST}", self.prefix, t.spec.name),
                body.into(),
            )
            .await?;
        Ok(())
    }

    /// Ends a chunk: stores what is pending and reports each track's init digest and segments
    /// for the stitch step; writes no playlist.
    pub async fn finish_chunk(mut self) -> Result<Vec<ChunkTrack>, PackError> {
        for i in 0..self.tracks.len() {
            self.flush_pending(i).await?;
        }
        self.check_complete()?;
        Ok(self
            .tracks
            .into_iter()
            .map(|t| ChunkTrack {
                name: t.spec.name,
                init_sha256: t.init_sha256.unwrap_or_default(),
                codec: t.spec.codec,
                segments: t.segments,
            })
            .collect())
    }

    /// Writes the VOD media playlists and the master of a chunked attempt from its chunks'
    /// segments (per track, in order), with bandwidths measured over all of them.
    pub async fn stitch(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<String>,
        tracks: Vec<Track>,
        segments: Vec<Vec<(String, f32, u64)>>,
    ) -> Result<Vec<RenditionInfo>, PackError> {
        Packager::with_segments(store, prefix, tracks, segments)?
            .finish()
            .await
    }

    /// Writes the `EVENT` media playlists of a chunked attempt over the segments finished so
    /// far (per track, in order), and the live master (nominal rates) when `master` is set:
    /// the step that makes the attempt playable writes it once.
    pub async fn write_live(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<String>,
        tracks: Vec<Track>,
        segments: Vec<Vec<(String, f32, u64)>>,
        target_duration_s: u32,
        master: bool,
    ) -> Result<(), PackError> {
        let p = Packager::with_segments(store, prefix, tracks, segments)?.live(target_duration_s);
        p.check_complete()?;
        for i in 0..p.tracks.len() {
            p.write_media(i, p.live).await?;
        }
        if master {
            p.write_live_master().await?;
        }
        Ok(())
    }

    /// A packager over segments already stored (by a chunked attempt's tasks).
    fn with_segments(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<String>,
        tracks: Vec<Track>,
        segments: Vec<Vec<(String, f32, u64)>>,
    ) -> Result<Self, PackError> {
        if tracks.len() != segments.len() {
            return Err(PackError::Invalid(
                "a segment list per track is needed".into(),
            ));
        }
        let mut p = Packager::new(store, prefix, tracks);
        for (t, segs) in p.tracks.iter_mut().zip(segments) {
            t.has_init = true;
            t.segments = segs;
        }
        Ok(p)
    }

    fn check_complete(&self) -> Result<(), PackError> {
        for t in &self.tracks {
            if !t.has_init || t.segments.is_empty() {
                return Err(PackError::Invalid(format!(
                    "track {} produced no segment",
                    t.spec.name
                )));
            }
        }
        Ok(())
    }

    /// Writes the VOD media playlists and the master playlist with measured bandwidths; returns
    /// the video renditions as the status API shows them.
    pub async fn finish(mut self) -> Result<Vec<RenditionInfo>, PackError> {
        for i in 0..self.tracks.len() {
            self.flush_pending(i).await?;
        }
        self.check_complete()?;
        for i in 0..self.tracks.len() {
            self.write_media(i, None).await?;
        }
        let (master, renditions) = master_playlist(&self.tracks, false);
        self.store
            .put_bytes(&format!("{}{MASTER_PLAYLIST}", self.prefix), master.into())
            .await?;
        Ok(renditions)
    }
}

/// A track's media playlist: `EVENT` without an end while encoding (`live_target` is the fixed
/// target duration), else `VOD` with `EXT-X-ENDLIST`.
fn media_playlist(t: &TrackState, live_target: Option<u64>) -> Vec<u8> {
    // RFC 8216: each EXTINF rounded to the nearest integer must not exceed the target.
    let longest = t
        .segments
        .iter()
        .map(|(_, d, _)| d.round() as u64)
        .max()
        .unwrap_or(1)
        .max(1);
    let segments = t
        .segments
        .iter()
        .enumerate()
        .map(|(i, (uri, d, _))| MediaSegment {
            uri: uri.clone(),
            duration: *d,
            map: (i == 0).then(|| Map {
                uri: INIT_SEGMENT.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let pl = MediaPlaylist {
        version: Some(7),
        target_duration: live_target.map_or(longest, |t| t.max(longest)),
        media_sequence: 0,
        segments,
        end_list: live_target.is_none(),
        playlist_type: Some(if live_target.is_some() {
            MediaPlaylistType::Event
        } else {
            MediaPlaylistType::Vod
        }),
        // Players treat a growing playlist as live and would start at its edge; a lecture
        // starts at the beginning.
        start: live_target.map(|_| Start {
            time_offset: 0.0,
            precise: Some(true),
            other_attributes: Default::default(),
        }),
        independent_segments: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    pl.write_to(&mut out).expect("writing to a Vec cannot fail");
    out
}

/// The RFC 6381 codec string of a CMAF init segment's track: `avc1.PPCCLL` from its `avcC`
/// box, `mp4a.40.N` from its `esds` audio object type.
pub fn codec_from_init(init: &[u8]) -> Option<String> {
    let find = |tag: &[u8]| init.windows(4).position(|w| w == tag).map(|i| i + 4);
    if let Some(i) = find(b"avcC") {
        let c = init.get(i..i + 4)?;
        return (c[0] == 1).then(|| format!("avc1.{:02x}{:02x}{:02x}", c[1], c[2], c[3]));
    }
    let i = find(b"esds")? + 4; // version and flags
    let mut p = &init[i.min(init.len())..];
    // Each descriptor: tag, then a length of up to four 7-bit bytes.
    fn descriptor<'a>(p: &mut &'a [u8], want: u8) -> Option<&'a [u8]> {
        let (&tag, rest) = p.split_first()?;
        let mut len = 0usize;
        let mut rest = rest;
        for _ in 0..4 {
            let (&b, r) = rest.split_first()?;
            rest = r;
            len = (len << 7) | (b & 0x7f) as usize;
            if b & 0x80 == 0 {
                break;
            }
        }
        if tag != want || rest.len() < len {
            return None;
        }
        *p = &rest[len..];
        Some(&rest[..len])
    }
    let es = descriptor(&mut p, 0x03)?;
    let flags = *es.get(2)?;
    let mut skip = 3;
    if flags & 0x80 != 0 {
        skip += 2;
    }
    if flags & 0x40 != 0 {
        skip += 1 + *es.get(skip)? as usize;
    }
    if flags & 0x20 != 0 {
        skip += 2;
    }
    let mut q = es.get(skip..)?;
    let dc = descriptor(&mut q, 0x04)?;
    let oti = *dc.first()?;
    if oti != 0x40 {
        return Some(format!("mp4a.{oti:02x}"));
    }
    let mut r = dc.get(13..)?;
    let dsi = descriptor(&mut r, 0x05)?;
    let aot = dsi.first()? >> 3;
    let aot = if aot == 31 {
        32 + (((dsi.first()? & 0x07) << 3) | (dsi.get(1)? >> 5)) as u32
    } else {
        aot as u32
    };
    Some(format!("mp4a.40.{aot}"))
}

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The master playlist; `nominal` declares the ladder's rates (nothing is measured yet).
fn master_playlist(tracks: &[TrackState], nominal: bool) -> (Vec<u8>, Vec<RenditionInfo>) {
    let audio = tracks
        .iter()
        .find(|t| matches!(t.spec.kind, TrackKind::Audio { .. }));
    let mut pl = MasterPlaylist {
        version: Some(7),
        independent_segments: true,
        ..Default::default()
    };
    if let Some(a) = audio {
        let channels = match a.spec.kind {
            TrackKind::Audio { channels } => channels,
            _ => 2,
        };
        pl.alternatives.push(AlternativeMedia {
            media_type: AlternativeMediaType::Audio,
            uri: Some(format!("{}/{MEDIA_PLAYLIST}", a.spec.name)),
            group_id: AUDIO_GROUP.into(),
            name: "Default".into(),
            default: true,
            autoselect: true,
            channels: Some(channels.to_string()),
            ..Default::default()
        });
    }
    let rates = |t: &TrackState| {
        if nominal {
            t.spec.nominal_bps
        } else {
            (t.peak_bps(), t.average_bps())
        }
    };
    let (a_peak, a_avg) = audio.map(rates).unwrap_or((0, 0));
    let mut renditions = Vec::new();
    for t in tracks {
        let TrackKind::Video { width, height, fps } = t.spec.kind else {
            continue;
        };
        let (v_peak, v_avg) = rates(t);
        let bandwidth = v_peak + a_peak;
        let codecs = [
            t.spec.codec.clone(),
            audio.and_then(|a| a.spec.codec.clone()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(",");
        pl.variants.push(VariantStream {
            uri: format!("{}/{MEDIA_PLAYLIST}", t.spec.name),
            bandwidth,
            average_bandwidth: Some(v_avg + a_avg),
            codecs: (!codecs.is_empty()).then_some(codecs),
            resolution: Some(Resolution {
                width: width as u64,
                height: height as u64,
            }),
            frame_rate: Some((fps * 1000.0).round() / 1000.0),
            audio: audio.map(|_| AUDIO_GROUP.to_string()),
            ..Default::default()
        });
        renditions.push(RenditionInfo {
            name: t.spec.name.clone(),
            width,
            height,
            bandwidth,
        });
    }
    let mut out = Vec::new();
    pl.write_to(&mut out).expect("writing to a Vec cannot fail");
    (out, renditions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lectern_core::storage::FileStore;

    #[tokio::test]
    async fn writes_playlists_with_measured_bandwidth() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FileStore::new(dir.path()).await.unwrap());
        let tracks = vec![
            Track {
                name: "480p".into(),
                kind: TrackKind::Video {
                    width: 854,
                    height: 480,
                    fps: 29.97002997,
                },
                codec: Some("avc1.64001f".into()),
                nominal_bps: (1_498_000, 1_400_000),
            },
            Track {
                name: "audio".into(),
                kind: TrackKind::Audio { channels: 2 },
                codec: Some("mp4a.40.2".into()),
                nominal_bps: (128_000, 128_000),
            },
        ];
        let mut p = Packager::new(store.clone(), "videos/v/t/", tracks);
        assert!(
            p.segment(0, Bytes::from_static(b"x"), 6.0).await.is_err(),
            "init comes first"
        );
        p.init(0, Bytes::from_static(b"init")).await.unwrap();
        p.init(1, Bytes::from_static(b"init")).await.unwrap();
        p.segment(0, Bytes::from(vec![0u8; 750_000]), 6.0)
            .await
            .unwrap(); // 1 Mb/s
        p.segment(0, Bytes::from(vec![0u8; 375_000]), 2.0)
            .await
            .unwrap(); // 1.5 Mb/s
        p.segment(1, Bytes::from(vec![0u8; 96_000]), 6.0)
            .await
            .unwrap(); // 128 kb/s
        p.segment(1, Bytes::from(vec![0u8; 32_000]), 2.0)
            .await
            .unwrap();
        let r = p.finish().await.unwrap();
        assert_eq!(
            r,
            vec![RenditionInfo {
                name: "480p".into(),
                width: 854,
                height: 480,
                bandwidth: 1_628_000
            }]
        );
        let master = String::from_utf8(
            store
                .get_bytes("videos/v/t/master.m3u8")
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(master.contains("AVERAGE-BANDWIDTH=1253000"), "{master}");
        assert!(
            master.contains("CODECS=\"avc1.64001f,mp4a.40.2\""),
            "{master}"
        );
        assert!(master.contains("FRAME-RATE=29.97"), "{master}");
        assert!(master.contains("AUDIO=\"aac\""), "{master}");
        assert!(master.contains("#EXT-X-INDEPENDENT-SEGMENTS"), "{master}");
        let media = String::from_utf8(
            store
                .get_bytes("videos/v/t/480p/index.m3u8")
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        for needle in [
            "#EXT-X-VERSION:7",
            "#EXT-X-TARGETDURATION:6",
            "#EXT-X-PLAYLIST-TYPE:VOD",
            "#EXT-X-MAP:URI=\"init.mp4\"",
            "seg00002.m4s",
            "#EXT-X-ENDLIST",
            "#EXT-X-INDEPENDENT-SEGMENTS",
        ] {
            assert!(media.contains(needle), "missing {needle} in {media}");
        }
        let parsed = m3u8_rs::parse_media_playlist_res(media.as_bytes()).unwrap();
        assert_eq!(parsed.segments.len(), 2);
    }

    #[tokio::test]
    async fn fragments_group_into_short_lead_segments_then_full_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FileStore::new(dir.path()).await.unwrap());
        let tracks = vec![Track {
            name: "480p".into(),
            kind: TrackKind::Video {
                width: 854,
                height: 480,
                fps: 30.0,
            },
            codec: Some("avc1.64001f".into()),
            nominal_bps: (1_498_000, 1_400_000),
        }];
        let mut p = Packager::new(store.clone(), "videos/v/t/", tracks)
            .live(6)
            .grouping(2, 3);
        p.init(0, Bytes::from_static(b"init")).await.unwrap();
        assert!(
            p.fragment(0, Bytes::from_static(b"f1"), 1.0).await.unwrap(),
            "one fragment makes the first segment"
        );
        p.fragment(0, Bytes::from_static(b"f2"), 1.0).await.unwrap();
        for f in [b"f3", b"f4", b"f5", b"f6", b"f7"] {
            p.fragment(0, Bytes::from_static(f), 2.0).await.unwrap();
        }
        p.finish().await.unwrap();
        let media = text(&store, "videos/v/t/480p/index.m3u8").await;
        let pl = m3u8_rs::parse_media_playlist_res(media.as_bytes()).unwrap();
        let d: Vec<f32> = pl.segments.iter().map(|s| s.duration).collect();
        assert_eq!(d, [1.0, 1.0, 6.0, 4.0], "{media}");
        assert_eq!(
            &store
                .get_bytes("videos/v/t/480p/seg00002.m4s")
                .await
                .unwrap()[..],
            b"f2"
        );
        assert_eq!(
            &store
                .get_bytes("videos/v/t/480p/seg00003.m4s")
                .await
                .unwrap()[..],
            b"f3f4f5"
        );
        assert_eq!(
            &store
                .get_bytes("videos/v/t/480p/seg00004.m4s")
                .await
                .unwrap()[..],
            b"f6f7",
            "what is left at the end is the last segment"
        );
    }

    async fn text(store: &Arc<dyn ObjectStore>, key: &str) -> String {
        String::from_utf8(store.get_bytes(key).await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn live_mode_publishes_event_playlists_then_vod_at_the_same_uris() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FileStore::new(dir.path()).await.unwrap());
        let track = |name: &str, kind, nominal| Track {
            name: name.into(),
            kind,
            codec: None,
            nominal_bps: nominal,
        };
        let tracks = vec![
            track(
                "480p",
                TrackKind::Video {
                    width: 854,
                    height: 480,
                    fps: 30.0,
                },
                (1_498_000, 1_400_000),
            ),
            track(
                "audio",
                TrackKind::Audio { channels: 2 },
                (128_000, 128_000),
            ),
        ];
        let mut p = Packager::new(store.clone(), "videos/v/t/", tracks).live(6);
        // avcC: version 1, High profile (0x64), no constraints, level 3.1 (0x1f).
        p.init(
            0,
            Bytes::from_static(b"\0\0\0\x10avcC\x01\x64\x00\x1f\xff\xe1"),
        )
        .await
        .unwrap();
        // esds: ES descriptor > decoder config (MPEG-4 audio) > specific info, AAC-LC (2).
        let esds: &[u8] = b"esds\0\0\0\0\x03\x16\x00\x01\x00\x04\x11\x40\x15\0\0\0\0\0\0\0\0\0\0\0\x05\x02\x11\x90";
        p.init(1, Bytes::copy_from_slice(esds)).await.unwrap();
        assert!(!p
            .segment(0, Bytes::from(vec![0u8; 1000]), 6.006)
            .await
            .unwrap());
        assert!(
            store.head("videos/v/t/480p/index.m3u8").await.is_err(),
            "nothing is announced before every track has a segment"
        );
        assert!(
            p.segment(1, Bytes::from(vec![0u8; 100]), 6.016)
                .await
                .unwrap(),
            "the last track's first segment makes it playable"
        );
        assert!(p.is_playable());
        let live = text(&store, "videos/v/t/live.m3u8").await;
        assert!(live.contains("BANDWIDTH=1626000"), "nominal peak: {live}");
        assert!(live.contains("AVERAGE-BANDWIDTH=1528000"), "{live}");
        assert!(
            live.contains("CODECS=\"avc1.64001f,mp4a.40.2\""),
            "codecs from the init segments: {live}"
        );
        let media = text(&store, "videos/v/t/480p/index.m3u8").await;
        for needle in [
            "#EXT-X-PLAYLIST-TYPE:EVENT",
            "#EXT-X-TARGETDURATION:6",
            "#EXT-X-START:TIME-OFFSET=0",
            "seg00001.m4s",
        ] {
            assert!(media.contains(needle), "missing {needle} in {media}");
        }
        assert!(!media.contains("#EXT-X-ENDLIST"), "{media}");
        assert!(!p
            .segment(0, Bytes::from(vec![0u8; 1000]), 2.0)
            .await
            .unwrap());
        let media = text(&store, "videos/v/t/480p/index.m3u8").await;
        assert!(media.contains("seg00002.m4s"), "grows: {media}");
        p.finish().await.unwrap();
        let media = text(&store, "videos/v/t/480p/index.m3u8").await;
        assert!(media.contains("#EXT-X-PLAYLIST-TYPE:VOD") && media.contains("#EXT-X-ENDLIST"));
        assert!(!media.contains("#EXT-X-START"), "{media}");
        let master = text(&store, "videos/v/t/master.m3u8").await;
        assert!(
            master.contains("BANDWIDTH=4133,"),
            "measured peak: {master}"
        );
        assert_eq!(
            text(&store, "videos/v/t/live.m3u8").await,
            live,
            "the live master is written once"
        );
    }
}
