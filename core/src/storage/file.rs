//! The file store: objects as files under a root folder, multipart uploads as one data file
//! per upload written in place. The embedded default and the single-node deployment use it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{
    validate_key, ByteRange, ByteStream, GetResult, InPlaceParts, MultipartStore, ObjectMeta,
    ObjectStore, Part, PartList, PartWriter, StoreError, StoreResult,
};

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
        // Open and stat in one trip to the blocking pool.
        let (file, m) = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let m = f.metadata()?;
            Ok::<_, io::Error>((f, m))
        })
        .await
        .map_err(io::Error::other)?
        .map_err(not_found(key))?;
        if !m.is_file() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        let meta = Self::meta_of(&m);
        let range = match range {
            Some(r) => r.resolve(meta.size)?,
            None => 0..meta.size,
        };
        // The stream reads through its own descriptor (a `dup`, sharing the file position);
        // `sendfile` on `local` passes its own offset and never moves that position.
        let mut f = tokio::fs::File::from_std(file.try_clone()?);
        if range.start > 0 {
            f.seek(io::SeekFrom::Start(range.start)).await?;
        }
        let reader = f.take(range.end - range.start);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024);
        Ok(GetResult {
            meta,
            range,
            stream: Box::pin(stream),
            local: Some(Arc::new(file)),
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
        let dir = self.path(prefix.trim_end_matches('/'))?;
        // A writer still finishing under the prefix (an attempt that has not yet seen its
        // video deleted) can put a file in a folder as it is removed: remove it again.
        let mut tries = 0;
        loop {
            match tokio::fs::remove_dir_all(&dir).await {
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                _ => return Ok(()),
            }
        }
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    fn multipart(&self) -> Option<&dyn MultipartStore> {
        Some(self)
    }
}

#[async_trait]
impl MultipartStore for FileStore {
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
        parts: &PartList,
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
        let total: u64 = parts.total();
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

    // Parts of any size: each request's bytes end in parts, written where they belong.
    fn min_part_size(&self) -> u64 {
        0
    }

    fn concurrent_parts(&self) -> bool {
        false
    }

    fn in_place(&self) -> Option<&dyn InPlaceParts> {
        Some(self)
    }
}

#[async_trait]
impl InPlaceParts for FileStore {
    async fn part_writer(
        &self,
        upload_id: &str,
        number: u32,
        offset: u64,
    ) -> StoreResult<Box<dyn PartWriter>> {
        let dir = self.multipart_dir(upload_id)?;
        let missing = format!("multipart upload {upload_id}");
        let d = dir.clone();
        let file = tokio::task::spawn_blocking(move || open_data_at(&d, number, offset, &missing))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))??;
        Ok(Box::new(FilePartWriter {
            file: Arc::new(file),
            dir,
            number,
            start: offset,
            written: 0,
            pending: Vec::new(),
            pending_len: 0,
        }))
    }
}
