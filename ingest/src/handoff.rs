//! The hand-off of a finished upload: concatenation of partial uploads into a final one, and
//! assembling the object, marking the upload complete and queueing its video.

use super::*;

/// Builds a final upload's object from its partials: server-side part copies where the store
/// allows them (every part but the last must be at least 5 MiB on S3), re-reading small ones.
pub(crate) async fn compose(
    st: &IngestState,
    u: &Upload,
    partials: &[Upload],
) -> Result<(), ApiError> {
    let p = st.part_size;
    let mut parts = PartList::default();
    let mut buf = BytesMut::new();
    for (i, part) in partials.iter().enumerate() {
        let last = i + 1 == partials.len();
        let size = part.length as u64;
        if size == 0 {
            continue;
        }
        if buf.is_empty() && (size >= MIN_PART.min(st.parts()?.min_part_size()) || last) {
            let n = parts.next_number();
            let at = parts.total();
            parts.push(
                st.parts()?
                    .copy_part(&u.object_key, &u.multipart_id, n, at, &part.object_key)
                    .await?,
            );
            continue;
        }
        let mut got = st.store.get(&part.object_key, None).await?.stream;
        while let Some(chunk) = got.next().await {
            buf.extend_from_slice(&chunk.map_err(ApiError::unavailable)?);
            while buf.len() >= p {
                let n = parts.next_number();
                let at = parts.total();
                let data = buf.split_to(p).freeze();
                parts.push(
                    st.parts()?
                        .put_part(&u.object_key, &u.multipart_id, n, at, data)
                        .await?,
                );
            }
        }
    }
    if !buf.is_empty() {
        let n = parts.next_number();
        let at = parts.total();
        parts.push(
            st.parts()?
                .put_part(&u.object_key, &u.multipart_id, n, at, buf.freeze())
                .await?,
        );
    }
    let u = st.engines.native().ctx().commit(u, parts, None).await?;
    finish(st, &u).await
}

/// Assembles the object, marks the upload complete and queues its video. Idempotent.
pub(crate) async fn finish(st: &IngestState, u: &Upload) -> Result<(), ApiError> {
    if u.state == uploads::UploadState::Uploading {
        st.engines.of(u).assemble(u).await?;
        uploads::mark_complete(&st.db, &u.id).await?;
    }
    if !u.is_video() {
        return Ok(());
    }
    let Some(v) = videos::get(&st.db, &u.id).await? else {
        return Ok(());
    };
    if v.state == videos::VideoState::Uploading {
        // Enqueue first: a crash in between leaves the video `uploading` with a full upload,
        // which `recover` finishes again; the worker accepts it in either state.
        let qp = lectern_core::queue::placement(&st.db, &v.org, v.priority).await?;
        let task = st
            .queue
            .enqueue(&u.id, qp)
            .await
            .map_err(ApiError::unavailable)?;
        videos::mark_queued(&st.db, &u.id, &task, qp).await?;
        metrics::counter!("lectern_uploads_completed_total").increment(1);
        tracing::info!(upload = %u.id, "upload complete; queued for transcoding");
    }
    Ok(())
}
