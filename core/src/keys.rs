//! The object store's key layout, in one place: where sources, attempts, renditions, captions
//! and posters live, and the playlist file names every reader and writer shares.
//!
//! ```text
//! sources/{upload_id}                                the uploaded source
//! videos/{video_id}/{token}/master.m3u8             an attempt's VOD master (token: per attempt)
//! videos/{video_id}/{token}/live.m3u8               its master while still encoding
//! videos/{video_id}/{token}/{track}/init.mp4        a track's CMAF init segment
//! videos/{video_id}/{token}/{track}/seg00001.m4s    …its media segments
//! videos/{video_id}/{token}/{track}/index.m3u8      …and its media playlist
//! videos/{video_id}/{token}/poster/poster.jpg       the poster
//! videos/{video_id}/{token}/subs-{lang}/            one revision of a caption track
//! ```

/// Master playlist name at an attempt's prefix.
pub const MASTER_PLAYLIST: &str = "master.m3u8";
/// Master playlist of an attempt that is still encoding (nominal bandwidths).
pub const LIVE_MASTER_PLAYLIST: &str = "live.m3u8";
/// Media playlist name inside each track folder.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";
/// CMAF init segment name inside each track folder.
pub const INIT_SEGMENT: &str = "init.mp4";
/// A caption revision's WebVTT file name.
pub const CAPTIONS_FILE: &str = "captions.vtt";

/// The first path segment of every video object.
const VIDEOS: &str = "videos/";

/// Where an upload's source bytes are stored.
pub fn source(upload_id: &str) -> String {
    format!("sources/{upload_id}")
}

/// Everything stored for a video, every attempt and caption revision (ends in `/`).
pub fn video_root(video_id: &str) -> String {
    format!("{VIDEOS}{video_id}/")
}

/// A fresh folder under a video for one attempt or caption revision (ends in `/`).
pub fn revision(video_id: &str, token: &str) -> String {
    format!("{VIDEOS}{video_id}/{token}/")
}

/// A caption track's revision folder (ends in `/`).
pub fn captions_dir(video_id: &str, token: &str, lang: &str) -> String {
    format!("{VIDEOS}{video_id}/{token}/subs-{lang}/")
}

/// The poster of an attempt under its prefix.
pub fn poster(prefix: &str) -> String {
    format!("{prefix}poster/poster.jpg")
}

/// One file of a track (or caption folder) of an attempt.
pub fn track_file(video_id: &str, token: &str, track: &str, file: &str) -> String {
    format!("{VIDEOS}{video_id}/{token}/{track}/{file}")
}

/// A key below `videos/`, without that first segment (public URLs mirror it under `/v/`).
pub fn under_videos(key: &str) -> Option<&str> {
    key.strip_prefix(VIDEOS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_nests() {
        let prefix = revision("v1", "t1");
        assert!(prefix.starts_with(&video_root("v1")));
        assert_eq!(
            track_file("v1", "t1", "720p", INIT_SEGMENT),
            format!("{prefix}720p/init.mp4")
        );
        assert_eq!(poster(&prefix), "videos/v1/t1/poster/poster.jpg");
        assert_eq!(captions_dir("v1", "t2", "de"), "videos/v1/t2/subs-de/");
        assert_eq!(
            under_videos(&poster(&prefix)),
            Some("v1/t1/poster/poster.jpg")
        );
        assert_eq!(under_videos(&source("u")), None);
    }
}
