//! The object-store seam. Keys are `/`-separated relative paths. Writes are streamed, reads can
//! be ranged, and large objects are assembled from multipart parts, mirroring S3 so an S3 backend
//! fits behind the same trait. Objects become visible only when complete.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

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
        parts: &[Part],
    ) -> StoreResult<()>;

    /// Drops a multipart upload and its parts.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()>;

    /// A local file path for the object, when the backend has one (lets GStreamer read directly).
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }

    /// The smallest size a part but the last may have (S3: 5 MiB). A store that takes parts
    /// of any size (0) needs no tail objects: every request's bytes end in parts.
    fn min_part_size(&self) -> u64 {
        5 << 20
    }

    /// A writer that stores part `number` at `offset` as its bytes arrive, for stores that
    /// write in place (the data reaches the disk while the request is still being received);
    /// `None`, the default, when parts must be sent whole with [`ObjectStore::put_part`].
    async fn part_writer(
        &self,
        _upload_id: &str,
        _number: u32,
        _offset: u64,
    ) -> StoreResult<Option<Box<dyn PartWriter>>> {
        Ok(None)
    }
}

/// A part being written as its bytes arrive (see [`ObjectStore::part_writer`]).
#[async_trait]
pub trait PartWriter: Send {
    /// Appends bytes to the part.
    async fn write(&mut self, data: Bytes) -> StoreResult<()>;
    /// Bytes appended so far.
    fn written(&self) -> u64;
    /// Makes the part durable and returns it.
    async fn finish(self: Box<Self>) -> StoreResult<Part>;
}

/// A FileStore part written in place: batches of about 1 MiB are `pwrite`n as they arrive and
/// their writeback is started at once (`sync_file_range`), so the `fdatasync` that ends the
/// part only waits for the last batch.
struct FilePartWriter {
    file: Arc<std::fs::File>,
    dir: PathBuf,
    number: u32,
    start: u64,
    written: u64,
    pending: Vec<Bytes>,
    pending_len: usize,
}

/// Opens a multipart upload's data file for part `number` at `offset` (blocking): no gap may
/// precede it, and bytes at or past it (a part stored but never committed) are dropped.
fn open_data_at(dir: &Path, number: u32, offset: u64, missing: &str) -> StoreResult<std::fs::File> {
    let f = match std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(dir.join("data"))
    {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound(missing.to_string()))
        }
        other => other?,
    };
    let len = f.metadata()?.len();
    if len < offset {
        return Err(StoreError::Backend(format!(
            "part {number} of {missing} starts at byte {offset} but only {len} bytes are stored; the file store takes parts in order"
        )));
    }
    if len != offset {
        f.set_len(offset)?;
    }
    Ok(f)
}

/// Bytes gathered before one `pwrite`.
const WRITE_BATCH: usize = 1 << 20;

impl FilePartWriter {
    async fn flush(&mut self) -> StoreResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let len = std::mem::take(&mut self.pending_len) as u64;
        let at = self.start + self.written;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::os::unix::fs::FileExt;
            use std::os::unix::io::AsRawFd;
            let mut pos = at;
            for b in &batch {
                file.write_all_at(b, pos)?;
                pos += b.len() as u64;
            }
            // Start writing these pages back now; the closing fdatasync then has little left.
            // SAFETY: a valid open descriptor and a range inside the file.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    at as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        self.written += len;
        Ok(())
    }
}

#[async_trait]
impl PartWriter for FilePartWriter {
    async fn write(&mut self, data: Bytes) -> StoreResult<()> {
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written + self.pending_len as u64
    }

    async fn finish(mut self: Box<Self>) -> StoreResult<Part> {
        self.flush().await?;
        let (file, dir, first) = (self.file.clone(), self.dir.clone(), self.start == 0);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            file.sync_data()?;
            if first {
                // The data file is new: make its directory entry durable too.
                std::fs::File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Part {
            number: self.number,
            etag: format!("{}-{}", self.number, self.written),
            size: self.written,
        })
    }
}

/// Opens the store named by a URL: `file://DIR` (or a plain path), or `s3://BUCKET[/PREFIX]`
/// with an optional endpoint for S3-compatible servers and a bound on how long a request to it
/// may wait for an answer, or a body for its next byte (see [`crate::s3::S3Store::open`]).
pub async fn open(
    url: &str,
    s3_endpoint: Option<&str>,
    s3_timeout: std::time::Duration,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if let Some(dir) = url.strip_prefix("file://") {
        return Ok(Arc::new(FileStore::new(dir).await?));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(
            crate::s3::S3Store::open(url, s3_endpoint, s3_timeout).await?,
        ));
    }
    if !url.contains("://") {
        return Ok(Arc::new(FileStore::new(url).await?));
    }
    anyhow::bail!("unknown storage URL '{url}': use file://DIR or s3://BUCKET")
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

/// Where an appended part's bytes come from.
enum PartSource<'a> {
    /// Bytes in memory.
    Bytes(Bytes),
    /// Another object in the same store.
    Object(&'a str),
}

/// Objects as files under a root folder. Writes go to `.tmp/` and are renamed into place after
/// fsync, so a reader never sees a partial object and a crash leaves no torn file.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Opens (creating) a store rooted at `root`.
    pub async fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        tokio::fs::create_dir_all(root.join(".tmp")).await?;
        tokio::fs::create_dir_all(root.join(".multipart")).await?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn multipart_dir(&self, upload_id: &str) -> StoreResult<PathBuf> {
        if upload_id.len() != 32 || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound(format!(
                "multipart upload {upload_id}"
            )));
        }
        Ok(self.root.join(".multipart").join(upload_id))
    }

    /// The folder of a multipart upload that must exist.
    async fn open_multipart(&self, upload_id: &str) -> StoreResult<PathBuf> {
        let dir = self.multipart_dir(upload_id)?;
        if !tokio::fs::try_exists(&dir).await? {
            return Err(StoreError::NotFound(format!(
                "multipart upload {upload_id}"
            )));
        }
        Ok(dir)
    }

    /// Writes part `number` at `offset` of the upload's data file, first dropping whatever lies
    /// at or after it (a part stored again after a crash replaces the stale bytes). Parts are
    /// written once, in place, so completing the upload is a rename rather than a copy. One
    /// blocking hop and one `fdatasync` per part: the part sizes live with the caller (the
    /// upload row), so the store keeps no index of its own.
    async fn append_part(
        &self,
        upload_id: &str,
        number: u32,
        offset: u64,
        src: PartSource<'_>,
    ) -> StoreResult<Part> {
        let dir = self.multipart_dir(upload_id)?;
        let source = match src {
            PartSource::Bytes(b) => Ok(b),
            PartSource::Object(key) => Err(self.path(key)?),
        };
        let missing = format!("multipart upload {upload_id}");
        let size = tokio::task::spawn_blocking(move || -> StoreResult<u64> {
            use std::os::unix::fs::FileExt;
            let f = open_data_at(&dir, number, offset, &missing)?;
            let size = match source {
                Ok(bytes) => {
                    f.write_all_at(&bytes, offset)?;
                    bytes.len() as u64
                }
                Err(path) => {
                    let mut from = std::fs::File::open(path)?;
                    let mut to = &f;
                    use std::io::Seek;
                    to.seek(io::SeekFrom::Start(offset))?;
                    std::io::copy(&mut from, &mut to)?
                }
            };
            f.sync_data()?;
            if offset == 0 {
                // The data file is new: make its directory entry durable too.
                std::fs::File::open(&dir)?.sync_all()?;
            }
            Ok(size)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Part {
            number,
            etag: format!("{number}-{size}"),
            size,
        })
    }

    fn tmp_path(&self) -> PathBuf {
        self.root.join(".tmp").join(crate::new_id())
    }

    async fn write_stream(path: &Path, mut body: ByteStream) -> StoreResult<u64> {
        let mut f = tokio::fs::File::create(path).await?;
        let mut n = 0u64;
        let res: StoreResult<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                f.write_all(&chunk).await?;
                n += chunk.len() as u64;
            }
            f.flush().await?;
            f.sync_all().await?;
            Ok(())
        }
        .await;
        if let Err(e) = res {
            drop(f);
            let _ = tokio::fs::remove_file(path).await;
            return Err(e);
        }
        Ok(n)
    }

    async fn publish(&self, tmp: &Path, dest: &Path) -> StoreResult<()> {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        tokio::fs::rename(tmp, dest).await?;
        Ok(())
    }

    fn meta_of(m: &std::fs::Metadata) -> ObjectMeta {
        let modified = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(m);
        #[cfg(not(unix))]
        let ino = 0u64;
        ObjectMeta {
            size: m.len(),
            modified_ms: modified.as_millis() as i64,
            // Objects are replaced by rename, never rewritten in place, so inode+size+mtime is a
            // strong validator.
            etag: format!("\"{:x}-{:x}-{:x}\"", ino, m.len(), modified.as_nanos()),
        }
    }
}

fn not_found(key: &str) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| {
        // A key through an object as if it were a folder (`a.m4s/b`) names nothing either.
        if matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
        ) {
            StoreError::NotFound(key.to_string())
        } else {
            StoreError::Io(e)
        }
    }
}

#[async_trait]
impl ObjectStore for FileStore {
    async fn put_stream(&self, key: &str, body: ByteStream) -> StoreResult<u64> {
        let dest = self.path(key)?;
        let tmp = self.tmp_path();
        let n = Self::write_stream(&tmp, body).await?;
        self.publish(&tmp, &dest).await?;
        Ok(n)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> StoreResult<GetResult> {
        let path = self.path(key)?;
        let mut f = tokio::fs::File::open(&path).await.map_err(not_found(key))?;
        let m = f.metadata().await?;
        if !m.is_file() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        let meta = Self::meta_of(&m);
        let range = match range {
            Some(r) => r.resolve(meta.size)?,
            None => 0..meta.size,
        };
        if range.start > 0 {
            f.seek(io::SeekFrom::Start(range.start)).await?;
        }
        let reader = f.take(range.end - range.start);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024);
        Ok(GetResult {
            meta,
            range,
            stream: Box::pin(stream),
        })
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let m = tokio::fs::metadata(self.path(key)?)
            .await
            .map_err(not_found(key))?;
        if !m.is_file() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        Ok(Self::meta_of(&m))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> StoreResult<()> {
        let dir = prefix.trim_end_matches('/');
        match tokio::fs::remove_dir_all(self.path(dir)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        self.path(key)?;
        let id = crate::new_id();
        tokio::fs::create_dir_all(self.multipart_dir(&id)?).await?;
        Ok(id)
    }

    async fn put_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: u32,
        offset: u64,
        body: Bytes,
    ) -> StoreResult<Part> {
        self.append_part(upload_id, number, offset, PartSource::Bytes(body))
            .await
    }

    async fn copy_part(
        &self,
        _key: &str,
        upload_id: &str,
        number: u32,
        offset: u64,
        source: &str,
    ) -> StoreResult<Part> {
        self.append_part(upload_id, number, offset, PartSource::Object(source))
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
    ) -> StoreResult<()> {
        let dest = self.path(key)?;
        let dir = self.open_multipart(upload_id).await?;
        for (i, p) in parts.iter().enumerate() {
            if p.number as usize != i + 1 {
                return Err(StoreError::Backend(format!(
                    "parts of {upload_id} must be numbered 1..n in order (got {} at {})",
                    p.number,
                    i + 1
                )));
            }
        }
        let total: u64 = parts.iter().map(|p| p.size).sum();
        let data = dir.join("data");
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&data)
            .await?;
        let stored = f.metadata().await?.len();
        if stored < total {
            return Err(StoreError::Backend(format!(
                "{upload_id} holds {stored} bytes but its parts add up to {total}"
            )));
        }
        // Drop stale bytes of parts stored after the last committed one.
        f.set_len(total).await?;
        f.sync_all().await?;
        drop(f);
        self.publish(&data, &dest).await?;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> StoreResult<()> {
        match tokio::fs::remove_dir_all(self.multipart_dir(upload_id)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    fn min_part_size(&self) -> u64 {
        0
    }

    async fn part_writer(
        &self,
        upload_id: &str,
        number: u32,
        offset: u64,
    ) -> StoreResult<Option<Box<dyn PartWriter>>> {
        let dir = self.multipart_dir(upload_id)?;
        let missing = format!("multipart upload {upload_id}");
        let d = dir.clone();
        let file = tokio::task::spawn_blocking(move || open_data_at(&d, number, offset, &missing))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Some(Box::new(FilePartWriter {
            file: Arc::new(file),
            dir,
            number,
            start: offset,
            written: 0,
            pending: Vec::new(),
            pending_len: 0,
        })))
    }
}

/// The `Range` header of a request as a [`ByteRange`]: `None` when absent (or multi-range),
/// 416 when malformed.
pub fn request_range(
    headers: &axum::http::HeaderMap,
) -> Result<Option<ByteRange>, crate::error::ApiError> {
    match headers
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse_header)
    {
        Some(r) => Ok(Some(r.map_err(StoreError::from)?)),
        None => Ok(None),
    }
}

/// Streams a stored object as an HTTP response: 200 or 206 with `Content-Range`, plus
/// `Content-Type`, `Content-Length`, `Accept-Ranges`, `ETag` and `Last-Modified`. `head`
/// sends the headers without the body.
pub fn object_response(
    got: GetResult,
    ranged: bool,
    content_type: &str,
    head: bool,
) -> Result<axum::response::Response, crate::error::ApiError> {
    use axum::http::{header, HeaderValue, StatusCode};
    let bad = crate::error::ApiError::internal;
    let len = got.range.end - got.range.start;
    let body = if head {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from_stream(got.stream)
    };
    let mut r = axum::response::Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).map_err(bad)?,
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&got.meta.etag).map_err(bad)?,
    );
    if let Some(t) = chrono::DateTime::from_timestamp_millis(got.meta.modified_ms) {
        let v = t.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_str(&v).map_err(bad)?,
        );
    }
    if ranged {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = format!(
            "bytes {}-{}/{}",
            got.range.start,
            got.range.end - 1,
            got.meta.size
        );
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).map_err(bad)?,
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
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
            s.complete_multipart("up/x", &id, std::slice::from_ref(&p2))
                .await
                .is_err(),
            "numbering is checked"
        );
        s.complete_multipart("up/x", &id, &[p1, p2]).await.unwrap();
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
        let mut w = s.part_writer(&id, 1, 0).await.unwrap().unwrap();
        w.write(Bytes::from(vec![b'a'; 3 << 20])).await.unwrap();
        w.write(Bytes::from_static(b"bc")).await.unwrap();
        assert_eq!(w.written(), (3 << 20) + 2);
        let p1 = w.finish().await.unwrap();
        // Part 2 written, never committed (crash), then written again shorter.
        let mut w = s.part_writer(&id, 2, p1.size).await.unwrap().unwrap();
        w.write(Bytes::from_static(b"stale stale")).await.unwrap();
        w.finish().await.unwrap();
        let mut w = s.part_writer(&id, 2, p1.size).await.unwrap().unwrap();
        w.write(Bytes::from_static(b"d")).await.unwrap();
        let p2 = w.finish().await.unwrap();
        assert!(s.part_writer(&id, 4, 1 << 30).await.is_err(), "no gaps");
        s.complete_multipart("up/y", &id, &[p1, p2]).await.unwrap();
        let got = s.get_bytes("up/y").await.unwrap();
        assert_eq!(got.len(), (3 << 20) + 3);
        assert_eq!(&got[got.len() - 3..], b"bcd");
        assert_eq!(s.min_part_size(), 0);
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
