//! The packager: takes CMAF init and media segments per track, writes them through the
//! object-store seam, measures their bitrates and writes the media and master playlists with
//! m3u8-rs. It knows nothing of GStreamer; the transcoder feeds it bytes.
//!
//! Layout under the attempt prefix: `master.m3u8`, and per track `{name}/init.mp4`,
//! `{name}/seg00001.m4s`…, `{name}/index.m3u8`. Audio is one separate rendition shared by every
//! video variant through an `EXT-X-MEDIA` group, so it is encoded and stored once.

use std::sync::Arc;

use bytes::Bytes;
use lectern_core::storage::{ObjectStore, StoreError};
use lectern_core::videos::RenditionInfo;
use m3u8_rs::{
    AlternativeMedia, AlternativeMediaType, Map, MasterPlaylist, MediaPlaylist, MediaPlaylistType,
    MediaSegment, Resolution, VariantStream,
};

/// The audio group id used in the master playlist.
pub const AUDIO_GROUP: &str = "aac";
/// Playlist file name inside each track folder.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";
/// Master playlist name at the prefix.
pub const MASTER_PLAYLIST: &str = "master.m3u8";

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
    /// RFC 6381 codec string, e.g. `avc1.640028` or `mp4a.40.2`.
    pub codec: Option<String>,
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
    segments: Vec<(String, f32, u64)>,
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
}

impl Packager {
    /// Starts packaging `tracks` under `prefix` (which must end with `/`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>, tracks: Vec<Track>) -> Self {
        let tracks = tracks
            .into_iter()
            .map(|spec| TrackState {
                spec,
                has_init: false,
                segments: Vec::new(),
            })
            .collect();
        Self {
            store,
            prefix: prefix.into(),
            tracks,
        }
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

    /// Sets a track's codec string once it is known from the stream.
    pub fn set_codec(&mut self, track: usize, codec: String) -> Result<(), PackError> {
        self.track(track)?.spec.codec = Some(codec);
        Ok(())
    }

    /// Stores a track's init segment (`ftyp` + `moov`).
    pub async fn init(&mut self, track: usize, data: Bytes) -> Result<(), PackError> {
        let key = self.key(track, "init.mp4")?;
        self.store.put_bytes(&key, data).await?;
        self.track(track)?.has_init = true;
        Ok(())
    }

    /// Stores the next media segment (`moof` + `mdat`) of a track.
    pub async fn segment(
        &mut self,
        track: usize,
        data: Bytes,
        duration_s: f64,
    ) -> Result<(), PackError> {
        let t = self.track(track)?;
        if !t.has_init {
            return Err(PackError::Invalid(format!(
                "segment for {} before its init segment",
                t.spec.name
            )));
        }
        let uri = format!("seg{:05}.m4s", t.segments.len() + 1);
        let key = self.key(track, &uri)?;
        let len = data.len() as u64;
        self.store.put_bytes(&key, data).await?;
        self.track(track)?
            .segments
            .push((uri, duration_s as f32, len));
        Ok(())
    }

    /// Writes the VOD media playlists and the master playlist with measured bandwidths; returns
    /// the video renditions as the status API shows them.
    pub async fn finish(self) -> Result<Vec<RenditionInfo>, PackError> {
        for t in &self.tracks {
            if t.segments.is_empty() {
                return Err(PackError::Invalid(format!(
                    "track {} produced no segment",
                    t.spec.name
                )));
            }
            let body = media_playlist(t);
            self.store
                .put_bytes(
                    &format!("{}{}/{MEDIA_PLAYLIST}", self.prefix, t.spec.name),
                    body.into(),
                )
                .await?;
        }
        let (master, renditions) = master_playlist(&self.tracks);
        self.store
            .put_bytes(&format!("{}{MASTER_PLAYLIST}", self.prefix), master.into())
            .await?;
        Ok(renditions)
    }
}

fn media_playlist(t: &TrackState) -> Vec<u8> {
    let target = t
        .segments
        .iter()
        .map(|(_, d, _)| d.ceil() as u64)
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
                uri: "init.mp4".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let pl = MediaPlaylist {
        version: Some(7),
        target_duration: target,
        media_sequence: 0,
        segments,
        end_list: true,
        playlist_type: Some(MediaPlaylistType::Vod),
        independent_segments: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    pl.write_to(&mut out).expect("writing to a Vec cannot fail");
    out
}

fn master_playlist(tracks: &[TrackState]) -> (Vec<u8>, Vec<RenditionInfo>) {
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
    let (a_peak, a_avg) = audio
        .map(|a| (a.peak_bps(), a.average_bps()))
        .unwrap_or((0, 0));
    let mut renditions = Vec::new();
    for t in tracks {
        let TrackKind::Video { width, height, fps } = t.spec.kind else {
            continue;
        };
        let bandwidth = t.peak_bps() + a_peak;
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
            average_bandwidth: Some(t.average_bps() + a_avg),
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
            },
            Track {
                name: "audio".into(),
                kind: TrackKind::Audio { channels: 2 },
                codec: Some("mp4a.40.2".into()),
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
}
