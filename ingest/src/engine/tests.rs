//! Both engines against a real store (a temporary file store; S3 too when
//! `LECTERN_TEST_S3_ENDPOINT` names one) and a real SQLite database: any chunking gives the
//! exact bytes, a body cut off keeps what arrived, a checksum mismatch stores nothing, and a
//! crash between storing a part and committing it loses no committed byte and duplicates none.

use std::sync::atomic::AtomicUsize;

use axum::body::Body;
use bytes::Bytes;
use lectern_core::auth::{Claims, Role};
use lectern_core::storage::{FileStore, StoreError};

use super::*;
use crate::checksum::Checksum;
use crate::uploads::{self, NewUpload};

/// Which engine, over which store.
#[derive(Clone, Copy, Debug)]
enum Kind {
    InPlace,
    PartsOnFile,
    PartsOnS3,
}

/// A database and a store of one test, with the part size its engine uses.
struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    store: Arc<dyn ObjectStore>,
    kind: Kind,
    part: usize,
}

impl Fixture {
    /// `None` when the kind needs an S3 server and none is configured.
    async fn new(kind: Kind) -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/t.db?mode=rwc", dir.path().display()))
            .await
            .unwrap();
        let (store, part): (Arc<dyn ObjectStore>, usize) = match kind {
            Kind::InPlace | Kind::PartsOnFile => (
                Arc::new(FileStore::new(dir.path().join("store")).await.unwrap()),
                1000,
            ),
            Kind::PartsOnS3 => {
                let Ok(endpoint) = std::env::var("LECTERN_TEST_S3_ENDPOINT") else {
                    eprintln!("skipped on S3: LECTERN_TEST_S3_ENDPOINT is not set");
                    return None;
                };
                let bucket = format!("lectern-engine-{}", lectern_core::new_id().to_lowercase());
                let s3 = lectern_core::storage::s3::S3Store::open(
                    bucket,
                    String::new(),
                    Some(&endpoint),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
                // S3's smallest part (all but the last).
                (Arc::new(s3), 5 << 20)
            }
        };
        Some(Fixture {
            _dir: dir,
            db,
            store,
            kind,
            part,
        })
    }

    /// The engine under test, crashing before commit number `crash_after + 1` if given.
    fn engine(&self, crash_after: Option<usize>) -> Box<dyn UploadEngine> {
        let ctx = Ctx {
            db: self.db.clone(),
            store: self.store.clone(),
            part_size: self.part,
            expiry: Duration::from_secs(3600),
            crash_after: crash_after.map(|n| Arc::new(AtomicUsize::new(n))),
        };
        match self.kind {
            Kind::InPlace => Box::new(InPlace::new(ctx).with_part(self.part as u64)),
            Kind::PartsOnFile | Kind::PartsOnS3 => Box::new(PartsAndTails::new(ctx)),
        }
    }

    /// A new upload of `length` bytes, created through the engine.
    async fn upload(&self, length: usize) -> Upload {
        let id = lectern_core::new_id();
        let key = lectern_core::keys::source(&id);
        let multipart_id = self.engine(None).create(&key).await.unwrap();
        let claims = Claims {
            sub: "u1".into(),
            org: "o1".into(),
            role: Role::Instructor,
            exp: i64::MAX,
            iat: 0,
            nbf: None,
        };
        uploads::insert(
            &self.db,
            NewUpload {
                id: &id,
                claims: &claims,
                length: length as i64,
                metadata: "",
                object_key: &key,
                multipart_id: &multipart_id,
                concat: "",
                partials: &[],
                expires_at: i64::MAX,
            },
        )
        .await
        .unwrap()
    }

    /// The upload as the database holds it now (what a restarted node would see).
    async fn reload(&self, u: &Upload) -> Upload {
        uploads::get(&self.db, &u.id).await.unwrap().unwrap()
    }

    /// Writes `bytes` as one request body cut into `chunk`-byte frames.
    async fn write(
        &self,
        engine: &dyn UploadEngine,
        u: Upload,
        bytes: &[u8],
        chunk: usize,
        progressive: bool,
    ) -> Result<(Upload, Option<String>), ApiError> {
        let limit = u.known_length().unwrap() - u.offset_bytes as u64;
        let frames: Vec<Result<Bytes, std::io::Error>> = bytes
            .chunks(chunk.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures::stream::iter(frames));
        engine
            .write(u, BodyReader::new(body, limit, None), progressive)
            .await
    }

    /// The assembled object's bytes.
    async fn object(&self, u: &Upload) -> Vec<u8> {
        self.store.get_bytes(&u.object_key).await.unwrap().to_vec()
    }

    /// The byte counts that must always agree: offset = committed parts + tail.
    fn assert_consistent(&self, u: &Upload) {
        assert_eq!(
            u.offset_bytes as u64,
            u.part_list().total() + u.tail_size as u64,
            "{:?}: offset must equal parts plus tail",
            self.kind
        );
    }
}

/// Bytes no two offsets share a pattern of, so a misplaced range shows.
fn payload(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

const ALL: [Kind; 3] = [Kind::InPlace, Kind::PartsOnFile, Kind::PartsOnS3];

#[tokio::test]
async fn any_split_into_requests_and_frames_stores_the_exact_bytes() {
    for kind in ALL {
        let Some(f) = Fixture::new(kind).await else {
            continue;
        };
        let p = f.part;
        let data = payload(6 * p + p / 2);
        // Requests that end inside a part, on a part boundary, span several parts (the last
        // one more than the parts that may upload at once), and are a single byte; frames
        // smaller and larger than a part.
        let cuts = [1, p / 3, p, 2 * p + 7, data.len()];
        let frames = [7, p, 64 * 1024, 4096, 1000];
        let engine = f.engine(None);
        let mut u = f.upload(data.len()).await;
        let mut at = 0;
        for (i, end) in cuts.into_iter().enumerate() {
            let (w, cut) = f
                .write(&*engine, u, &data[at..end], frames[i], i % 2 == 0)
                .await
                .unwrap();
            assert!(cut.is_none());
            assert_eq!(w.offset_bytes as usize, end, "{kind:?} after request {i}");
            f.assert_consistent(&w);
            assert_eq!(f.reload(&w).await.offset_bytes as usize, end);
            u = w;
            at = end;
        }
        assert!(u.tail_key.is_none(), "{kind:?}: a full upload has no tail");
        engine.assemble(&u).await.unwrap();
        assert!(f.object(&u).await == data, "{kind:?}: object differs");
    }
}

#[test]
fn a_request_keeps_as_many_parts_in_flight_as_its_buffer_holds() {
    let p = 8 << 20;
    let reader = |buffer: u64| {
        BodyReader::new(Body::empty(), 1, None)
            .with_buffer(buffer)
            .parts_in_flight(p)
    };
    assert_eq!(reader(0), 1, "one part uploads whatever the reservation");
    assert_eq!(reader(2 * p), 1, "one sending, one filling");
    assert_eq!(reader(3 * p), 2);
    assert_eq!(reader(64 * p), crate::PARTS_IN_FLIGHT);
    assert_eq!(reader(u64::MAX), crate::PARTS_IN_FLIGHT);
}

#[tokio::test]
async fn a_body_cut_off_keeps_what_arrived_and_resumes_from_there() {
    for kind in ALL {
        let Some(f) = Fixture::new(kind).await else {
            continue;
        };
        let p = f.part;
        let data = payload(2 * p + 100);
        let sent = p + p / 2;
        let engine = f.engine(None);
        let u = f.upload(data.len()).await;
        let frames: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::copy_from_slice(&data[..p / 2])),
            Ok(Bytes::copy_from_slice(&data[p / 2..sent])),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer went away",
            )),
        ];
        let body = Body::from_stream(futures::stream::iter(frames));
        let limit = data.len() as u64;
        let (u, cut) = engine
            .write(u, BodyReader::new(body, limit, None), true)
            .await
            .unwrap();
        assert!(cut.unwrap().contains("peer went away"));
        assert_eq!(u.offset_bytes as usize, sent, "{kind:?}");
        f.assert_consistent(&u);
        let (u, _) = f
            .write(&*engine, f.reload(&u).await, &data[sent..], 999, true)
            .await
            .unwrap();
        engine.assemble(&u).await.unwrap();
        assert!(f.object(&u).await == data, "{kind:?}: object differs");
    }
}

#[tokio::test]
async fn a_checksum_mismatch_commits_nothing() {
    for kind in [Kind::InPlace, Kind::PartsOnFile] {
        let f = Fixture::new(kind).await.unwrap();
        let data = payload(2500);
        let engine = f.engine(None);
        let u = f.upload(data.len()).await;
        let (u, _) = f
            .write(&*engine, u, &data[..300], 300, false)
            .await
            .unwrap();
        // The SHA-1 of nothing, which these bytes are not.
        let wrong = Checksum::parse("sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=").unwrap();
        let body = Body::from(data[300..1700].to_vec());
        let e = engine
            .write(u.clone(), BodyReader::new(body, 2200, Some(wrong)), false)
            .await
            .expect_err("a mismatch is refused");
        assert_eq!(e.status.as_u16(), 460, "{kind:?}");
        let now = f.reload(&u).await;
        assert_eq!(
            now.offset_bytes, 300,
            "{kind:?}: nothing of the bad body counts"
        );
        assert_eq!(now.parts, u.parts, "{kind:?}");
        let (u, _) = f
            .write(&*engine, now, &data[300..], 1000, false)
            .await
            .unwrap();
        engine.assemble(&u).await.unwrap();
        assert!(f.object(&u).await == data, "{kind:?}: object differs");
    }
}

/// The node dies after a part is durable but before its commit: the offset stays at the last
/// commit, a restarted node resumes from it, and the bytes stored past it are replaced, never
/// counted twice. Covered at the first commit of a request, at a later one, and (on the
/// parts engine) with a tail from an earlier request waiting to be folded in.
#[tokio::test]
async fn a_crash_between_storing_a_part_and_committing_it_loses_nothing_committed() {
    for kind in ALL {
        for (lead, crash_after) in [(0, 0), (0, 1), (300, 0), (300, 2)] {
            let Some(f) = Fixture::new(kind).await else {
                break;
            };
            let p = f.part;
            let lead = lead * p / 1000;
            let data = payload(4 * p + 77);
            let u = f.upload(data.len()).await;
            let healthy = f.engine(None);
            // An earlier request that leaves a short last part (in place) or a tail (parts).
            let u = if lead > 0 {
                let (u, _) = f
                    .write(&*healthy, u, &data[..lead], 100, false)
                    .await
                    .unwrap();
                if !matches!(kind, Kind::InPlace) {
                    assert!(
                        u.tail_key.is_some(),
                        "{kind:?}: a short request leaves a tail"
                    );
                }
                u
            } else {
                u
            };
            let before = u.clone();
            let dying = f.engine(Some(crash_after));
            let e = f
                .write(&*dying, u, &data[lead..], 64 * 1024, true)
                .await
                .expect_err("the injected crash ends the write");
            assert_eq!(e.status.as_u16(), 503);
            let now = f.reload(&before).await;
            f.assert_consistent(&now);
            let committed = now.offset_bytes as usize;
            // Every commit before the crash moved the offset by whole parts.
            // (A short part or a tail is first made whole.)
            let expect = if crash_after == 0 {
                lead
            } else {
                crash_after * p
            };
            assert_eq!(
                committed, expect,
                "{kind:?} lead {lead} crash {crash_after}"
            );
            if let Some(t) = &now.tail_key {
                // The tail is deleted only after the part that folds it in is committed.
                assert_eq!(
                    f.store.get_bytes(t).await.unwrap().len() as i64,
                    now.tail_size,
                    "{kind:?}: the tail must survive an uncommitted fold"
                );
            }
            // A restarted node resumes from the committed offset.
            let (u, _) = f
                .write(&*healthy, now, &data[committed..], 5000, true)
                .await
                .unwrap();
            assert_eq!(u.offset_bytes as usize, data.len());
            healthy.assemble(&u).await.unwrap();
            assert!(
                f.object(&u).await == data,
                "{kind:?} lead {lead} crash {crash_after}: object differs"
            );
        }
    }
}

#[tokio::test]
async fn discarding_an_upload_removes_its_parts_and_tail() {
    for kind in [Kind::InPlace, Kind::PartsOnFile] {
        let f = Fixture::new(kind).await.unwrap();
        let data = payload(2500);
        let engine = f.engine(None);
        let u = f.upload(data.len()).await;
        let (u, _) = f
            .write(&*engine, u, &data[..1300], 1300, false)
            .await
            .unwrap();
        engine.discard(&u).await.unwrap();
        if let Some(t) = &u.tail_key {
            assert!(matches!(
                f.store.head(t).await,
                Err(StoreError::NotFound(_))
            ));
        }
        // Nothing is left to assemble.
        assert!(engine.assemble(&u).await.is_err(), "{kind:?}");
    }
}
