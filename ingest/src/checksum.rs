//! The checksum extension: `Upload-Checksum: <sha1|sha256> <base64 digest>` over a PATCH body.
//! Digests run on a blocking-pool thread (ring, with SHA extensions where the CPU has them), so
//! hashing overlaps receiving and storing the body.

use bytes::Bytes;
use lectern_core::error::ApiError;
use lectern_wire::tus::Algorithm;
use ring::digest;
use tokio::sync::{mpsc, oneshot};

/// Algorithms advertised in `Tus-Checksum-Algorithm`.
pub use lectern_wire::tus::ALGORITHMS;

/// A digest being computed on a helper thread, and the value it must reach.
pub struct Checksum {
    tx: Option<mpsc::Sender<Vec<Bytes>>>,
    done: oneshot::Receiver<Vec<u8>>,
    want: Vec<u8>,
    // Body frames are small (kilobytes); handing them over in batches keeps the cost of
    // waking the hashing thread negligible.
    batch: Vec<Bytes>,
    batch_len: usize,
}

/// Bytes handed to the hashing thread at once.
const BATCH: usize = 1 << 20;

impl Checksum {
    /// Parses the header (400 for an unknown algorithm or a malformed digest) and starts the
    /// hashing thread.
    pub fn parse(header: &str) -> Result<Self, ApiError> {
        let (algorithm, want) = lectern_wire::tus::checksum(header)?;
        let algorithm = match algorithm {
            Algorithm::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Algorithm::Sha256 => &digest::SHA256,
        };
        // A few chunks of slack; the request waits when hashing falls behind.
        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(8);
        let (done_tx, done) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut ctx = digest::Context::new(algorithm);
            while let Some(batch) = rx.blocking_recv() {
                for chunk in batch {
                    ctx.update(&chunk);
                }
            }
            let _ = done_tx.send(ctx.finish().as_ref().to_vec());
        });
        Ok(Checksum {
            tx: Some(tx),
            done,
            want,
            batch: Vec::new(),
            batch_len: 0,
        })
    }

    /// Feeds body bytes.
    pub async fn update(&mut self, data: Bytes) {
        self.batch_len += data.len();
        self.batch.push(data);
        if self.batch_len >= BATCH {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        if let Some(tx) = &self.tx {
            if tx.send(batch).await.is_err() {
                self.tx = None;
            }
        }
    }

    /// True when the body matched the declared digest.
    pub async fn matches(mut self) -> bool {
        self.flush().await;
        self.tx = None;
        match self.done.await {
            Ok(got) => got == self.want,
            Err(_) => false,
        }
    }
}

/// The 460 answer for a body whose checksum does not match.
pub fn mismatch() -> ApiError {
    ApiError::new(
        lectern_core::error::Code::ChecksumMismatch,
        "the PATCH body does not match Upload-Checksum; nothing was stored, send the chunk again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_and_refuses() {
        // sha1("abc") and sha256("abc")
        let mut c = Checksum::parse("sha1 qZk+NkcGgWq6PiVxeFDCbJzQ2J0=").unwrap();
        c.update(Bytes::from_static(b"ab")).await;
        c.update(Bytes::from_static(b"c")).await;
        assert!(c.matches().await);
        let mut c = Checksum::parse("sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=").unwrap();
        c.update(Bytes::from_static(b"abd")).await;
        assert!(!c.matches().await);
        let mut c = Checksum::parse("sha256 ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=").unwrap();
        c.update(Bytes::from_static(b"abc")).await;
        assert!(c.matches().await);
        assert_eq!(
            Checksum::parse("md5 AAAA").err().unwrap().code,
            "unsupported-checksum-algorithm"
        );
        assert_eq!(mismatch().status.as_u16(), 460);
    }
}
