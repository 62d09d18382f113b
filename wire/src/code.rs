//! The one table of error codes: every `code` an error body of Lectern's API, ingest or origin
//! can carry, with the HTTP status it is answered with. A new code is one line here; the
//! OpenAPI document lists the same table.

macro_rules! codes {
    ($( #[doc = $doc:literal] $v:ident => ($name:literal, $status:literal) ),* $(,)?) => {
        /// A stable, kebab-case error code (serialised as its name) and its HTTP status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $( #[doc = $doc] $v, )*
        }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[$(Code::$v),*];

            /// The name clients match on.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$v => $name),* }
            }

            /// The HTTP status answered with this code (a few call sites answer a framework's
            /// own status instead; see `ApiError::with_status`).
            pub const fn status(self) -> u16 {
                match self { $(Code::$v => $status),* }
            }

            /// When it is answered (its line in the table), for the OpenAPI document.
            pub fn meaning(self) -> &'static str {
                match self { $(Code::$v => $doc.trim()),* }
            }
        }
    };
}

codes! {
    // 400: the request is malformed.
    /// A generic malformed request (the framework's own refusals).
    BadRequest => ("bad-request", 400),
    /// The request body was cut off before its end.
    BodyInterrupted => ("body-interrupted", 400),
    /// A final upload names the same partial twice.
    DuplicatePartial => ("duplicate-partial", 400),
    /// The JSON body does not parse or lacks documented fields.
    InvalidBody => ("invalid-body", 400),
    /// `Upload-Checksum` is malformed.
    InvalidChecksum => ("invalid-checksum", 400),
    /// `Content-Length` is not a non-negative integer.
    InvalidContentLength => ("invalid-content-length", 400),
    /// `Upload-Concat` is malformed.
    InvalidConcat => ("invalid-concat", 400),
    /// A paging cursor is not one this server handed out.
    InvalidCursor => ("invalid-cursor", 400),
    /// `Upload-Defer-Length` is not `1`.
    InvalidDeferLength => ("invalid-defer-length", 400),
    /// A caption label is empty, too long or holds control characters.
    InvalidLabel => ("invalid-label", 400),
    /// A caption language is not a BCP 47 tag.
    InvalidLanguage => ("invalid-language", 400),
    /// A `limit` is outside its range.
    InvalidLimit => ("invalid-limit", 400),
    /// `Upload-Metadata` is malformed or one of its values is refused.
    InvalidMetadata => ("invalid-metadata", 400),
    /// A path segment is not a valid id.
    InvalidPath => ("invalid-path", 400),
    /// A playlist could not be parsed or rewritten.
    InvalidPlaylist => ("invalid-playlist", 400),
    /// A priority is not one of the documented values.
    InvalidPriority => ("invalid-priority", 400),
    /// A state filter names no state.
    InvalidState => ("invalid-state", 400),
    /// `Upload-Length` is not a non-negative integer.
    InvalidUploadLength => ("invalid-upload-length", 400),
    /// `Upload-Offset` is not a non-negative integer.
    InvalidUploadOffset => ("invalid-upload-offset", 400),
    /// Neither `Upload-Length` nor `Upload-Defer-Length` was sent.
    MissingUploadLength => ("missing-upload-length", 400),
    /// A PATCH without `Upload-Offset`.
    MissingUploadOffset => ("missing-upload-offset", 400),
    /// A final upload names a partial that is not complete.
    PartialIncomplete => ("partial-incomplete", 400),
    /// A final upload names more partials than allowed.
    TooManyPartials => ("too-many-partials", 400),
    /// `Upload-Checksum` names an algorithm not offered.
    UnsupportedChecksumAlgorithm => ("unsupported-checksum-algorithm", 400),
    // 401, 403, 404, 405
    /// No token, or an invalid one.
    Unauthorized => ("unauthorized", 401),
    /// The right org but the wrong role.
    Forbidden => ("forbidden", 403),
    /// A playback URL's signature is missing, tampered with or expired.
    InvalidSignature => ("invalid-signature", 403),
    /// Unknown, or another org's (its existence is not revealed).
    NotFound => ("not-found", 404),
    /// The path does not support this method.
    MethodNotAllowed => ("method-not-allowed", 405),
    // 409: the resource's state does not allow it.
    /// The source's duration is not known yet.
    DurationUnknown => ("duration-unknown", 409),
    /// The lesson has no video yet.
    NoVideo => ("no-video", 409),
    /// The video is past the point where it can be cancelled.
    NotCancelable => ("not-cancelable", 409),
    /// The video is not waiting in the queue.
    NotQueued => ("not-queued", 409),
    /// The video is not `ready`.
    NotReady => ("not-ready", 409),
    /// Only a failed or cancelled video can be retried.
    NotRetryable => ("not-retryable", 409),
    /// `Upload-Offset` is not the upload's offset (or it moved meanwhile).
    OffsetMismatch => ("offset-mismatch", 409),
    /// The video's upload has not finished.
    StillUploading => ("still-uploading", 409),
    /// The upload already has every byte.
    UploadComplete => ("upload-complete", 409),
    /// The upload is not complete yet.
    UploadIncomplete => ("upload-incomplete", 409),
    // 410-431
    /// The upload was terminated or expired.
    UploadGone => ("upload-gone", 410),
    /// `Tus-Resumable` names a version not served.
    UnsupportedTusVersion => ("unsupported-tus-version", 412),
    /// The body runs past the upload's length.
    ExceedsUploadLength => ("exceeds-upload-length", 413),
    /// The org's storage quota would be exceeded.
    StorageQuotaExceeded => ("storage-quota-exceeded", 413),
    /// The request body is larger than this endpoint takes.
    TooLarge => ("too-large", 413),
    /// The upload is larger than the largest accepted.
    UploadTooLarge => ("upload-too-large", 413),
    /// The URI is longer than accepted.
    UriTooLong => ("uri-too-long", 414),
    /// A PATCH without `Content-Type: application/offset+octet-stream`.
    InvalidContentType => ("invalid-content-type", 415),
    /// The body's content type is not one this endpoint takes.
    UnsupportedMediaType => ("unsupported-media-type", 415),
    /// The byte range lies outside the object.
    RangeNotSatisfiable => ("range-not-satisfiable", 416),
    // 422: well-formed, but the content is refused.
    /// A webhook URL points somewhere webhooks may not go.
    ForbiddenUrl => ("forbidden-url", 422),
    /// A description is too long or holds control characters.
    InvalidDescription => ("invalid-description", 422),
    /// A webhook's event list names no known event.
    InvalidEvents => ("invalid-events", 422),
    /// A position is outside the lesson or the course.
    InvalidPosition => ("invalid-position", 422),
    /// A progress report is outside the video.
    InvalidProgress => ("invalid-progress", 422),
    /// A title is empty, too long or holds control characters.
    InvalidTitle => ("invalid-title", 422),
    /// A URL does not parse or holds what URLs may not (the request's own URL: 400).
    InvalidUrl => ("invalid-url", 422),
    /// A user id is not a valid id.
    InvalidUser => ("invalid-user", 422),
    /// A caption file is not valid WebVTT.
    InvalidWebvtt => ("invalid-webvtt", 422),
    /// No such lesson in the caller's org.
    UnknownLesson => ("unknown-lesson", 422),
    /// No such video in the caller's org.
    UnknownVideo => ("unknown-video", 422),
    // 423-460
    /// Another request is writing this upload.
    UploadLocked => ("upload-locked", 423),
    /// The org has too many videos waiting; retry once some are ready.
    QueueQuotaExceeded => ("queue-quota-exceeded", 429),
    /// Too many requests; wait for `Retry-After`.
    RateLimited => ("rate-limited", 429),
    /// The request's headers are larger than accepted.
    HeadersTooLarge => ("headers-too-large", 431),
    /// The body does not match `Upload-Checksum`; nothing of it was stored.
    ChecksumMismatch => ("checksum-mismatch", 460),
    // 5xx
    /// An unexpected failure; the detail is logged, not sent.
    Internal => ("internal", 500),
    /// A dependency (database, object store) is away; retry shortly.
    Unavailable => ("unavailable", 503),
    /// The node is at capacity; retry after `Retry-After`.
    OverCapacity => ("over-capacity", 503),
    /// The process is draining (`/readyz`).
    Draining => ("draining", 503),
    /// The database does not answer (`/readyz`).
    DatabaseUnavailable => ("database-unavailable", 503),
    /// The object store does not answer (`/readyz`).
    StoreUnavailable => ("store-unavailable", 503),
    /// The binary was built without the web bundle (`node web/build.mjs` before `cargo build`).
    PagesNotBuilt => ("pages-not-built", 503),
    /// The data folder or the object store has no room.
    StorageFull => ("storage-full", 507),
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// So a code compares with the name a client sees.
impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_kebab_case_and_round_trip() {
        let parse = |name: &str| Code::ALL.iter().copied().find(|c| c.as_str() == name);
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            let n = c.as_str();
            assert!(seen.insert(n), "{n} twice");
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{n} is not kebab-case"
            );
            assert_eq!(parse(n), Some(*c));
            assert!((400..600).contains(&c.status()), "{n}");
        }
        assert_eq!(parse("no-such-code"), None);
    }
}
