//! The S3 object store (aws-sdk-s3), for AWS and S3-compatible servers (MinIO, Ceph, s3s-fs…).
//! Objects live under an optional key prefix inside one bucket.

use std::io;

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::storage::{
    validate_key, ByteRange, ByteStream, GetResult, MultipartStore, ObjectMeta, ObjectStore, Part,
    PartList, StoreError, StoreResult,
};

/// Parts of streamed writes (`put_stream`) of unknown length.
const STREAM_PART: usize = 8 * 1024 * 1024;

/// An S3 bucket (plus key prefix) as an object store.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// How long a response body may go without a byte.
    idle: std::time::Duration,
    /// Part bodies go unsigned (`UNSIGNED-PAYLOAD`), sparing a SHA-256 pass over every byte
    /// here and another on the server, where nothing can alter them in transit: over TLS (as
    /// boto3 and the AWS CLI do) and over loopback. Elsewhere, over plain HTTP, they stay signed.
    unsigned_parts: bool,
}

/// True when requests to `endpoint` (none: AWS's own, over TLS) cannot be altered on the way.
fn tamper_proof(endpoint: Option<&str>) -> bool {
    let Some(ep) = endpoint else { return true };
    if ep.starts_with("https://") {
        return true;
    }
    let Ok(url) = ep.parse::<axum::http::Uri>() else {
        return false;
    };
    match url
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    {
        Some("localhost") => true,
        Some(h) => h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Ends a body stream with a `TimedOut` error once it goes `idle` without a byte, so a reader
/// (a segment response, a worker fetching its source) never hangs on a stalled server.
fn idle_bounded(
    stream: impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static,
    idle: std::time::Duration,
) -> ByteStream {
    let stream = Box::pin(stream);
    Box::pin(futures::stream::unfold(Some(stream), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(idle, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the object store sent nothing for {} s", idle.as_secs()),
                )),
                None,
            )),
        }
    }))
}

fn backend<E: std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> StoreError {
    StoreError::Backend(DisplayErrorContext(&e).to_string())
}

impl S3Store {
    /// Opens `bucket`, keys under `prefix` (see [`super::Backend`]), with the standard AWS environment (credentials, region)
    /// and an optional endpoint for S3-compatible servers. Creates the bucket if it is missing.
    /// A stalled server costs at most `timeout` per attempt: to connect, to the first byte of
    /// an answer (a part's upload included), and between two bytes of a body read.
    pub async fn open(
        bucket: String,
        prefix: String,
        endpoint: Option<&str>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region))
            .load()
            .await;
        // Part bodies are fresh bytes over TLS (or loopback): the SDK's default CRC32 over
        // every part is one more pass over each byte for nothing the transport lacks.
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk).request_checksum_calculation(
            aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
        );
        if let Some(ep) = endpoint {
            conf = conf.endpoint_url(ep).force_path_style(true);
        }
        conf = conf.timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
                .read_timeout(timeout)
                .build(),
        );
        let client = Client::from_conf(conf.build());
        let store = Self {
            client,
            bucket,
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
            idle: timeout,
            unsigned_parts: tamper_proof(endpoint),
        };
        store.ensure_bucket().await?;
        Ok(store)
    }

    async fn ensure_bucket(&self) -> anyhow::Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                self.client
                    .create_bucket()
                    .bucket(&self.bucket)
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "bucket {} does not exist and cannot be created: {}",
                            self.bucket,
                            DisplayErrorContext(&e)
                        )
                    })?;
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!(
                "cannot reach bucket {} (check LECTERN_S3_ENDPOINT and the AWS_* credentials): {}",
                self.bucket,
                DisplayErrorContext(&e)
            )),
        }
    }

    fn key(&self, key: &str) -> StoreResult<String> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    async fn single_put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(S3Body::from(body))
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }
}

fn meta(
    size: Option<i64>,
    modified: Option<&aws_sdk_s3::primitives::DateTime>,
    etag: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        size: size.unwrap_or(0).max(0) as u64,
        modified_ms: modified.and_then(|d| d.to_millis().ok()).unwrap_or(0),
        etag: etag
            .map(|e| {
                if e.starts_with('"') {
                    e.to_string()
                } else {
                    format!("\"{e}\"")
                }
            })
            .unwrap_or_default(),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_stream(&self, key: &str, mut body: ByteStream) -> StoreResult<u64> {
        let full = self.key(key)?;
        let mut buf = BytesMut::new();
        let mut total = 0u64;
        let mut upload: Option<(String, PartList)> = None;
        loop {
            let next = body.next().await;
            if let Some(chunk) = &next {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        if let Some((id, _)) = &upload {
                            let _ = self.abort_multipart(key, id).await;
                        }
                        return Err(StoreError::Io(io::Error::new(e.kind(), e.to_string())));
                    }
                };
                total += chunk.len() as u64;
                buf.extend_from_slice(chunk);
                if buf.len() < STREAM_PART {
                    continue;
                }
            }
            if next.is_none() && upload.is_none() {
                self.single_put(&full, buf.freeze()).await?;
                return Ok(total);
            }
            if upload.is_none() {
                upload = Some((self.create_multipart(key).await?, PartList::default()));
            }
            let (id, parts) = upload.as_mut().expect("just created");
            if !buf.is_empty() {
                let (n, at) = (parts.next_number(), parts.total());
                parts.push(self.put_part(key, id, n, at, buf.split().freeze()).await?);
            }
            if next.is_none() {
                let (id, parts) = upload.take().expect("multipart in progress");
                self.complete_multipart(key, &id, &parts).await?;
                return Ok(total);
            }
        }
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> StoreResult<GetResult> {
        let full = self.key(key)?;
        let head = self.head(key).await?;
        let range = match range {
            Some(r) => r.resolve(head.size)?,
            None => 0..head.size,
        };
        if range.is_empty() {
            return Ok(GetResult {
                meta: head,
                range,
                stream: Box::pin(futures::stream::empty()),
                local: None,
            });
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(s) if s.is_no_such_key() => StoreError::NotFound(key.to_string()),
                _ => backend(e),
            })?;
        let reader = out.body.into_async_read();
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024);
        Ok(GetResult {
            meta: head,
            range,
            stream: idle_bounded(stream, self.idle),
            local: None,
        })
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let full = self.key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    StoreError::NotFound(key.to_string())
                } else {
                    backend(e)
                }
            })?;
        Ok(meta(out.content_length(), out.last_modified(), out.e_tag()))
    }

    async fn read_url(&self, key: &str, ttl: std::time::Duration) -> Option<String> {
        let full = self.key(key).ok()?;
        let cfg = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl).ok()?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .presigned(cfg)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot presign a source URL; staging it"))
            .ok()?;
        Some(req.uri().to_string())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let full = self.key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> StoreResult<()> {
        let full = self.key(prefix.trim_end_matches('/'))? + "/";
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(backend)?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if !ids.is_empty() {
                let del = Delete::builder()
                    .set_objects(Some(ids))
                    .quiet(true)
                    .build()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(del)
                    .send()
                    .await
                    .map_err(backend)?;
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    fn multipart(&self) -> Option<&dyn MultipartStore> {
        Some(self)
    }
}

#[async_trait]
impl MultipartStore for S3Store {
    async fn create_multipart(&self, key: &str) -> StoreResult<String> {
        let full = self.key(key)?;
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(backend)?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Backend("S3 returned no upload id".into()))
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        _offset: u64,
        body: Bytes,
    ) -> StoreResult<Part> {
        let full = self.key(key)?;
        let size = body.len() as u64;
        let req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number as i32)
            .content_length(size as i64)
            .body(S3Body::from(body));
        let sent = if self.unsigned_parts {
            req.customize().disable_payload_signing().send().await
        } else {
            req.send().await
        };
        let out = sent.map_err(|e| match e.as_service_error() {
            Some(s) if s.meta().code() == Some("NoSuchUpload") => {
                StoreError::NotFound(format!("multipart upload {upload_id}"))
            }
            _ => backend(e),
        })?;
        Ok(Part {
            number,
            etag: out.e_tag().unwrap_or_default().to_string(),
            size,
        })
    }

    async fn copy_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        _offset: u64,
        source: &str,
    ) -> StoreResult<Part> {
        let full = self.key(key)?;
        let src = self.key(source)?;
        let size = self.head(source).await?.size;
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number as i32)
            .copy_source(format!("{}/{}", self.bucket, src))
            .send()
            .await
            .map_err(backend)?;
        let etag = out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_string();
        Ok(Part { number, etag, size })
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &PartList,
    ) -> StoreResult<()> {
        let full = self.key(key)?;
        if parts.is_empty() {
            // S3 refuses an empty multipart upload; an empty object is a plain PUT.
            self.abort_multipart(key, upload_id).await?;
            return self.single_put(&full, Bytes::new()).await;
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number as i32)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        let full = self.key(key)?;
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.meta().code() == Some("NoSuchUpload")) =>
            {
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    // S3 refuses a part under 5 MiB unless it is the last.
    fn min_part_size(&self) -> u64 {
        5 << 20
    }
}

#[cfg(test)]
mod tests {
    use super::tamper_proof;

    #[test]
    fn parts_go_unsigned_only_where_nothing_can_alter_them_on_the_way() {
        for ep in [
            None,
            Some("https://minio.internal:9000"),
            Some("http://127.0.0.1:5055"),
            Some("http://localhost:9000"),
            Some("http://[::1]:9000"),
        ] {
            assert!(tamper_proof(ep), "{ep:?}");
        }
        for ep in [
            "http://minio.internal:9000",
            "http://10.0.0.5:9000",
            "http://127.0.0.1.example.com",
            "not a url",
        ] {
            assert!(!tamper_proof(Some(ep)), "{ep}");
        }
    }
}
