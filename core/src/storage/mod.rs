//! The object-store seam. Keys are `/`-separated relative paths. Writes are streamed, reads can
//! be ranged, and large objects are assembled from multipart parts, mirroring S3 so an S3 backend
//! fits behind the same trait. Objects become visible only when complete.
//!
//! The backends are `file` ([`FileStore`]) and `s3` ([`s3::S3Store`]); [`Backend`] parses the
//! storage URL that picks one, and [`open`] opens it.

use std::fmt::Debug;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};

pub mod file;
pub mod s3;

pub use file::FileStore;

/// A stream of object bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object (or multipart upload) under that key.
    #[error("object not found: {0}")]
    NotFound(String),
    /// The key is not a safe relative path.
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    /// The requested range lies outside the object.
    #[error("range not satisfiable")]
    InvalidRange,
    /// A local I/O failure.
    #[error("storage i/o: {0}")]
    Io(#[from] io::Error),
    /// A remote backend failure.
    #[error("storage backend: {0}")]
    Backend(String),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Size and freshness of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Length in bytes.
    pub size: u64,
    /// Last modification, epoch milliseconds.
    pub modified_ms: i64,
    /// Strong validator for HTTP caching (quoted).
    pub etag: String,
}

pub use lectern_wire::range::ByteRange;

impl From<lectern_wire::range::Unsatisfiable> for StoreError {
    fn from(_: lectern_wire::range::Unsatisfiable) -> Self {
        StoreError::InvalidRange
    }
}

/// A ranged read: the object's metadata, the resolved range and the bytes.
pub struct GetResult {
    /// Metadata of the whole object.
    pub meta: ObjectMeta,
    /// The half-open byte range the stream carries.
    pub range: std::ops::Range<u64>,
    /// The bytes.
    pub stream: ByteStream,
    /// The object's file, when the store keeps it on local disk: a sender that owns its socket
    /// can hand the range to the kernel (`sendfile`) instead of reading `stream`.
    pub local: Option<Arc<std::fs::File>>,
}

/// One stored part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Part {
    /// 1-based part number.
    pub number: u32,
    /// Backend tag needed to complete the upload.
    pub etag: String,
    /// Bytes in the part.
    pub size: u64,
}

/// An upload's stored parts, in order. Their sizes add up to the bytes stored before the
/// tail, so the offset where the next part starts is [`PartList::total`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PartList(Vec<Part>);

impl PartList {
    /// Bytes in all parts: the offset where the next part starts.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|p| p.size).sum()
    }

    /// The number the next part gets (parts are numbered 1..n).
    pub fn next_number(&self) -> u32 {
        self.0.len() as u32 + 1
    }

    /// Appends a stored part.
    pub fn push(&mut self, part: Part) {
        self.0.push(part);
    }

    /// Takes the last part off (it is being rewritten).
    pub fn pop(&mut self) -> Option<Part> {
        self.0.pop()
    }
}

impl std::ops::Deref for PartList {
    type Target = [Part];
    fn deref(&self) -> &[Part] {
        &self.0
    }
}

impl From<Vec<Part>> for PartList {
    fn from(parts: Vec<Part>) -> Self {
        PartList(parts)
    }
}

/// The object store every role shares. Implementations must make an object visible only when
/// it is completely written.
#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// Writes a whole object from a stream; returns its size.
    async fn put_stream(&self, key: &str, body: ByteStream) -> StoreResult<u64>;

    /// Writes a whole object held in memory (playlists, small segments).
    async fn put_bytes(&self, key: &str, body: Bytes) -> StoreResult<()> {
        self.put_stream(
            key,
            Box::pin(futures::stream::once(async move { Ok(body) })),
        )
        .await?;
        Ok(())
    }

    /// Reads an object, or part of it.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> StoreResult<GetResult>;

    /// Reads a whole small object into memory.
    async fn get_bytes(&self, key: &str) -> StoreResult<Bytes> {
        let res = self.get(key, None).await?;
        let chunks: Vec<Bytes> = res.stream.try_collect().await?;
        Ok(chunks.concat().into())
    }

    /// Metadata of an object.
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;

    /// Removes an object; absent objects are not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Removes every object whose key starts with `prefix` (a folder, ending in `/`).
    async fn delete_prefix(&self, prefix: &str) -> StoreResult<()>;

    /// A URL valid for `ttl` that reads `key` with plain (ranged) GETs and no credentials, for
    /// encoder processes that read a source in place rather than staging it (S3: presigned);
    /// `None` when the store has none (a local store's files are read directly).
    async fn read_url(&self, _key: &str, _ttl: std::time::Duration) -> Option<String> {
        None
    }

    /// A local file path for the object, when the backend has one (lets GStreamer read directly).
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    /// Assembling objects from parts (multipart uploads), where the backend can: tus uploads
    /// need it. `None`, the default, for a store that only takes whole objects.
    fn multipart(&self) -> Option<&dyn MultipartStore> {
        None
    }
}

/// A store that assembles an object from numbered parts, as S3's multipart uploads do.
#[async_trait]
pub trait MultipartStore: Send + Sync {
    /// Starts a multipart upload that will become `key`; returns its upload id.
    async fn create_multipart(&self, key: &str) -> StoreResult<String>;

    /// Stores one part durably (S3 requires at least 5 MiB for every part but the last).
    /// `offset` is where the part starts in the final object (the sum of the sizes of parts
    /// `1..number`, which the caller keeps): a store that writes in place uses it, so it needs
    /// no bookkeeping of its own.
    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        offset: u64,
        body: Bytes,
    ) -> StoreResult<Part>;

    /// Stores a whole existing object as one part, copied server-side where the backend can.
    async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        offset: u64,
        source: &str,
    ) -> StoreResult<Part>;

    /// Assembles the parts, in order, into the object.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &PartList,
    ) -> StoreResult<()>;

    /// Drops a multipart upload and its parts.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;

    /// The smallest size a part but the last may have (S3: 5 MiB).
    fn min_part_size(&self) -> u64;

    /// Whether several parts may be stored at once and land in any order (S3). The file
    /// store writes one data file in place, so each part must follow the one before it.
    fn concurrent_parts(&self) -> bool {
        true
    }

    /// Writing parts in place as their bytes arrive, where the backend can (the file store):
    /// then a request's bytes all end in parts and no tail objects are needed. `None`, the
    /// default, when parts must be sent whole with [`MultipartStore::put_part`].
    fn in_place(&self) -> Option<&dyn InPlaceParts> {
        None
    }
}

/// A store that writes a part in place while its bytes are still arriving.
#[async_trait]
pub trait InPlaceParts: Send + Sync {
    /// A writer that stores part `number` at `offset` as its bytes arrive.
    async fn part_writer(
        &self,
        upload_id: &str,
        number: u32,
        offset: u64,
    ) -> StoreResult<Box<dyn PartWriter>>;
}

/// A part being written as its bytes arrive (see [`InPlaceParts::part_writer`]).
#[async_trait]
pub trait PartWriter: Send {
    /// Appends bytes to the part.
    async fn write(&mut self, data: Bytes) -> StoreResult<()>;
    /// Bytes appended so far.
    fn written(&self) -> u64;
    /// Makes the part durable and returns it.
    async fn finish(self: Box<Self>) -> StoreResult<Part>;
}

/// The store a storage URL names: the one place its forms are parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `file://DIR`, or a plain path: [`FileStore`].
    File(PathBuf),
    /// `s3://BUCKET[/PREFIX]`: [`s3::S3Store`].
    S3 {
        /// The bucket.
        bucket: String,
        /// A key prefix inside it, without slashes at either end (may be empty).
        prefix: String,
    },
}

impl Backend {
    /// Parses a storage URL; the error says which forms are accepted.
    pub fn parse(url: &str) -> Result<Backend, String> {
        if let Some(dir) = url.strip_prefix("file://") {
            return Ok(Backend::File(PathBuf::from(dir)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "the storage URL {url} names no bucket: use s3://BUCKET"
                ));
            }
            return Ok(Backend::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if !url.contains("://") && !url.is_empty() {
            return Ok(Backend::File(PathBuf::from(url)));
        }
        Err(format!(
            "unknown storage URL '{url}': use file://DIR or s3://BUCKET[/PREFIX]"
        ))
    }
}

/// Opens the store named by a URL (see [`Backend`]), with an optional endpoint for
/// S3-compatible servers and a bound on how long a request to it may wait for an answer, or a
/// body for its next byte (see [`s3::S3Store::open`]).
pub async fn open(
    url: &str,
    s3_endpoint: Option<&str>,
    s3_timeout: std::time::Duration,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(match Backend::parse(url).map_err(anyhow::Error::msg)? {
        Backend::File(dir) => Arc::new(FileStore::new(dir).await?),
        Backend::S3 { bucket, prefix } => {
            Arc::new(s3::S3Store::open(bucket, prefix, s3_endpoint, s3_timeout).await?)
        }
    })
}

/// Checks that a key is a safe relative path of plain segments.
pub fn validate_key(key: &str) -> StoreResult<()> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.starts_with('.')
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn storage_urls_name_one_backend() {
        use super::Backend;
        assert_eq!(
            Backend::parse("file:///var/lib/lectern/objects"),
            Ok(Backend::File("/var/lib/lectern/objects".into()))
        );
        assert_eq!(
            Backend::parse("objects"),
            Ok(Backend::File("objects".into()))
        );
        assert_eq!(
            Backend::parse("s3://media/lectern/"),
            Ok(Backend::S3 {
                bucket: "media".into(),
                prefix: "lectern".into()
            })
        );
        assert_eq!(
            Backend::parse("s3://media"),
            Ok(Backend::S3 {
                bucket: "media".into(),
                prefix: String::new()
            })
        );
        for bad in ["s3://", "s3:///x", "gs://media", ""] {
            assert!(Backend::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_last_positions_mean_to_the_end() {
        for h in [
            "bytes=0-18446744073709551615",
            "bytes=0-99999999999999999999999",
            "bytes=0-",
        ] {
            let r = ByteRange::parse_header(h).unwrap().unwrap();
            assert_eq!(r.resolve(100).unwrap(), 0..100, "{h}");
        }
        let r = ByteRange::parse_header("bytes=10-18446744073709551615")
            .unwrap()
            .unwrap();
        assert_eq!(r.resolve(100).unwrap(), 10..100);
        assert!(ByteRange::parse_header("bytes=5-x").unwrap().is_err());
        assert!(ByteRange::parse_header("bytes=100-200")
            .unwrap()
            .unwrap()
            .resolve(100)
            .is_err());
    }

    use super::*;

    fn body(parts: &[&'static [u8]]) -> ByteStream {
        Box::pin(futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn put_get_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path()).await.unwrap();
        assert_eq!(
            s.put_stream("a/b.bin", body(&[b"hello ", b"world"]))
                .await
                .unwrap(),
            11
        );
        assert_eq!(&s.get_bytes("a/b.bin").await.unwrap()[..], b"hello world");
        let r = s
            .get("a/b.bin", Some(ByteRange::Inclusive(6, 100)))
            .await
            .unwrap();
        assert_eq!(r.range, 6..11);
        let got: Vec<Bytes> = r.stream.try_collect().await.unwrap();
        assert_eq!(&got.concat()[..], b"world");
        assert!(matches!(
            s.get("a/b.bin", Some(ByteRange::From(11))).await,
            Err(StoreError::InvalidRange)
        ));
        s.delete_prefix("a/").await.unwrap();
        assert!(matches!(
            s.head("a/b.bin").await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn multipart_assembles_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path()).await.unwrap();
        let id = s.create_multipart("up/x").await.unwrap();
        s.put_bytes("src/w", Bytes::from_static(b"world"))
            .await
            .unwrap();
        let p1 = s
            .put_part("up/x", &id, 1, 0, Bytes::from_static(b"hello "))
            .await
            .unwrap();
        // A part stored but never committed (crash), then stored again with other bytes.
        s.put_part("up/x", &id, 2, 6, Bytes::from_static(b"stale bytes"))
            .await
            .unwrap();
        s.put_part("up/x", &id, 3, 17, Bytes::from_static(b"!"))
            .await
            .unwrap();
        let p2 = s.copy_part("up/x", &id, 2, 6, "src/w").await.unwrap();
        assert!(
            s.put_part("up/x", &id, 4, 100, Bytes::from_static(b"gap"))
                .await
                .is_err(),
            "parts come in order"
        );
        assert!(
            s.head("up/x").await.is_err(),
            "not visible before completion"
        );
        assert!(
            s.complete_multipart("up/x", &id, &vec![p2.clone()].into())
                .await
                .is_err(),
            "numbering is checked"
        );
        s.complete_multipart("up/x", &id, &vec![p1, p2].into())
            .await
            .unwrap();
        assert_eq!(&s.get_bytes("up/x").await.unwrap()[..], b"hello world");
        assert!(s
            .put_part("up/x", &id, 3, 11, Bytes::from_static(b"late"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn part_writers_write_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path()).await.unwrap();
        let id = s.create_multipart("up/y").await.unwrap();
        let mut w = s.part_writer(&id, 1, 0).await.unwrap();
        w.write(Bytes::from(vec![b'a'; 3 << 20])).await.unwrap();
        w.write(Bytes::from_static(b"bc")).await.unwrap();
        assert_eq!(w.written(), (3 << 20) + 2);
        let p1 = w.finish().await.unwrap();
        // Part 2 written, never committed (crash), then written again shorter.
        let mut w = s.part_writer(&id, 2, p1.size).await.unwrap();
        w.write(Bytes::from_static(b"stale stale")).await.unwrap();
        w.finish().await.unwrap();
        let mut w = s.part_writer(&id, 2, p1.size).await.unwrap();
        w.write(Bytes::from_static(b"d")).await.unwrap();
        let p2 = w.finish().await.unwrap();
        assert!(s.part_writer(&id, 4, 1 << 30).await.is_err(), "no gaps");
        s.complete_multipart("up/y", &id, &vec![p1, p2].into())
            .await
            .unwrap();
        let got = s.get_bytes("up/y").await.unwrap();
        assert_eq!(got.len(), (3 << 20) + 3);
        assert_eq!(&got[got.len() - 3..], b"bcd");
        assert_eq!(s.min_part_size(), 0);
        // The capabilities are reached through the trait object, as ingest reaches them.
        let dynamic: &dyn ObjectStore = &s;
        let mp = dynamic.multipart().expect("the file store assembles parts");
        assert!(mp.in_place().is_some(), "and writes them in place");
    }

    #[test]
    fn keys_and_ranges_are_checked() {
        for bad in ["", "../x", "a/../b", "/abs", "a//b", ".tmp/x", "a/b c"] {
            assert!(validate_key(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(validate_key("videos/abc/720p/seg00001.m4s").is_ok());
        assert_eq!(
            ByteRange::parse_header("bytes=0-9").unwrap().unwrap(),
            ByteRange::Inclusive(0, 9)
        );
        assert_eq!(
            ByteRange::parse_header("bytes=-5")
                .unwrap()
                .unwrap()
                .resolve(8)
                .unwrap(),
            3..8
        );
        assert!(ByteRange::parse_header("bytes=9-1").unwrap().is_err());
        assert!(ByteRange::parse_header("bytes=0-1,4-5").is_none());
    }
}
