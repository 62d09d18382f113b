//! `GET /api/v1/openapi.json`: an OpenAPI 3 document of every endpoint, built from one table
//! so that adding a route means adding a row (a test checks each documented route answers).

use serde_json::{json, Map, Value};

/// One operation: method, path, tag, summary, who may call it, success status, error statuses,
/// and the JSON body's fields (`name:type`, `?` suffix when optional).
struct Op {
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: &'static str,
    ok: u16,
    /// 200 besides a 201: the creation is idempotent and what it creates may already exist.
    idempotent: bool,
    errors: &'static [u16],
    body: &'static [&'static str],
}

// A table row; named fields would triple the table's length.
#[allow(clippy::too_many_arguments)]
const fn op(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: &'static str,
    ok: u16,
    errors: &'static [u16],
    body: &'static [&'static str],
) -> Op {
    Op {
        method,
        path,
        tag,
        summary,
        auth,
        ok,
        idempotent: false,
        errors,
        body,
    }
}

impl Op {
    /// Marks a creation that answers 200 when what it creates already exists.
    const fn idempotent(mut self) -> Op {
        self.idempotent = true;
        self
    }
}

const READ: &[u16] = &[401, 403, 404, 429];
const WRITE: &[u16] = &[400, 401, 403, 404, 422, 429];
const LIST: &[u16] = &[400, 401, 403, 429];
const ANY: &str = "learner, instructor or admin of the org";
const MGR: &str = "instructor or admin of the org";
const ADM: &str = "admin of the org (operators: every org)";
const OPR: &str = "operator";

const OPS: &[Op] = &[
    op(
        "post",
        "/files/",
        "ingest",
        "Create a tus upload (creation, creation-with-upload, defer-length, concatenation)",
        MGR,
        201,
        &[400, 401, 403, 412, 413, 415, 422, 423, 429, 507],
        &[],
    ),
    op(
        "head",
        "/files/{id}",
        "ingest",
        "Upload offset (tus HEAD)",
        MGR,
        200,
        &[401, 403, 404, 410, 412],
        &[],
    ),
    op(
        "patch",
        "/files/{id}",
        "ingest",
        "Append bytes at Upload-Offset",
        MGR,
        204,
        &[401, 403, 404, 409, 410, 412, 413, 415, 423, 460, 507],
        &[],
    ),
    op(
        "delete",
        "/files/{id}",
        "ingest",
        "Terminate an upload",
        MGR,
        204,
        &[401, 403, 404, 409, 410, 412],
        &[],
    ),
    op(
        "get",
        "/files/{id}",
        "ingest",
        "Download the stored source (Range supported)",
        MGR,
        200,
        &[401, 403, 404, 409, 416],
        &[],
    ),
    op(
        "get",
        "/api/v1/videos",
        "videos",
        "List the org's videos (?state, cursor paging)",
        MGR,
        200,
        LIST,
        &[],
    ),
    op(
        "get",
        "/api/v1/videos/{id}",
        "videos",
        "Video status: state, progress, queue_position, eta_s, renditions; chunks {total, done, running, workers} while encoded in chunks",
        MGR,
        200,
        READ,
        &[],
    ),
    op(
        "patch",
        "/api/v1/videos/{id}",
        "videos",
        "Rename a video",
        MGR,
        200,
        WRITE,
        &["title:string"],
    ),
    op(
        "delete",
        "/api/v1/videos/{id}",
        "videos",
        "Delete a video: job, source, renditions, captions",
        MGR,
        204,
        &[401, 403, 404, 409, 429],
        &[],
    ),
    op(
        "get",
        "/api/v1/videos/{id}/playback",
        "videos",
        "Signed master playlist URL (learners: enrolled only)",
        ANY,
        200,
        &[401, 403, 404, 409, 429],
        &[],
    ),
    op(
        "get",
        "/api/v1/videos/{id}/captions",
        "videos",
        "Caption tracks of a video",
        MGR,
        200,
        READ,
        &[],
    ),
    op(
        "put",
        "/api/v1/videos/{id}/captions/{lang}",
        "videos",
        "Upload WebVTT captions (Content-Type: text/vtt; ?label=)",
        MGR,
        201,
        &[400, 401, 403, 404, 409, 413, 415, 422, 429],
        &[],
    ),
    op(
        "delete",
        "/api/v1/videos/{id}/captions/{lang}",
        "videos",
        "Remove a caption track",
        MGR,
        204,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/admin/jobs",
        "jobs",
        "Transcode jobs (?state, ?org for operators, cursor paging)",
        ADM,
        200,
        LIST,
        &[],
    ),
    op(
        "patch",
        "/api/v1/admin/jobs/{id}",
        "jobs",
        "Change a queued job's priority class (0-100)",
        ADM,
        200,
        &[400, 401, 403, 404, 409, 429],
        &["priority:integer"],
    ),
    op(
        "post",
        "/api/v1/admin/jobs/{id}/cancel",
        "jobs",
        "Cancel a queued or running job",
        ADM,
        200,
        &[401, 403, 404, 409, 429],
        &[],
    ),
    op(
        "post",
        "/api/v1/admin/jobs/{id}/retry",
        "jobs",
        "Retry a failed or canceled job",
        ADM,
        200,
        &[401, 403, 404, 409, 429, 503],
        &[],
    ),
    op(
        "get",
        "/api/v1/admin/workers",
        "jobs",
        "Transcode worker processes: slots, liveness and running jobs (operators)",
        OPR,
        200,
        READ,
        &[],
    ),
    op(
        "post",
        "/api/v1/courses",
        "courses",
        "Create a course",
        MGR,
        201,
        WRITE,
        &["title:string", "description:string?"],
    ),
    op(
        "get",
        "/api/v1/courses",
        "courses",
        "Courses: the org's (managers) or the enrolled ones (learners)",
        ANY,
        200,
        LIST,
        &[],
    ),
    op(
        "get",
        "/api/v1/courses/{id}",
        "courses",
        "A course",
        ANY,
        200,
        READ,
        &[],
    ),
    op(
        "patch",
        "/api/v1/courses/{id}",
        "courses",
        "Edit a course",
        MGR,
        200,
        WRITE,
        &["title:string?", "description:string?"],
    ),
    op(
        "delete",
        "/api/v1/courses/{id}",
        "courses",
        "Delete a course with its lessons, enrollments and progress",
        MGR,
        204,
        READ,
        &[],
    ),
    op(
        "post",
        "/api/v1/courses/{id}/lessons",
        "courses",
        "Add a lesson",
        MGR,
        201,
        WRITE,
        &["title:string", "video_id:string?", "position:integer?"],
    ),
    op(
        "get",
        "/api/v1/courses/{id}/lessons",
        "courses",
        "Lessons in position order (cursor paging)",
        ANY,
        200,
        READ,
        &[],
    ),
    op(
        "post",
        "/api/v1/courses/{id}/enrollments",
        "courses",
        "Enroll a learner (idempotent)",
        MGR,
        201,
        WRITE,
        &["user:string"],
    )
    .idempotent(),
    op(
        "get",
        "/api/v1/courses/{id}/enrollments",
        "courses",
        "Enrolled learners (cursor paging)",
        MGR,
        200,
        READ,
        &[],
    ),
    op(
        "delete",
        "/api/v1/courses/{id}/enrollments/{user}",
        "courses",
        "Unenroll a learner",
        MGR,
        204,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/courses/{id}/progress",
        "progress",
        "The caller's progress in a course",
        ANY,
        200,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/courses/{id}/report",
        "progress",
        "Per-learner completion report (cursor paging)",
        MGR,
        200,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/lessons/{id}",
        "courses",
        "A lesson",
        ANY,
        200,
        READ,
        &[],
    ),
    op(
        "patch",
        "/api/v1/lessons/{id}",
        "courses",
        "Edit a lesson (video_id null detaches)",
        MGR,
        200,
        WRITE,
        &["title:string?", "position:integer?", "video_id:string?"],
    ),
    op(
        "delete",
        "/api/v1/lessons/{id}",
        "courses",
        "Delete a lesson",
        MGR,
        204,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/lessons/{id}/playback",
        "courses",
        "Signed playback URL of the lesson's video",
        ANY,
        200,
        &[401, 403, 404, 409, 429],
        &[],
    ),
    op(
        "post",
        "/api/v1/lessons/{id}/progress",
        "progress",
        "Heartbeat: playhead and watched ranges (write-behind)",
        ANY,
        202,
        WRITE,
        &["position_s:number", "watched:array?"],
    ),
    op(
        "get",
        "/api/v1/lessons/{id}/progress",
        "progress",
        "The caller's own watch state of a lesson (where a player resumes)",
        ANY,
        200,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/me/continue",
        "progress",
        "Lessons the caller started and has not completed",
        ANY,
        200,
        LIST,
        &[],
    ),
    op(
        "post",
        "/api/v1/webhooks",
        "webhooks",
        "Register an HTTPS endpoint; the secret is shown once",
        "admin of the org",
        201,
        WRITE,
        &["url:string", "events:array"],
    ),
    op(
        "get",
        "/api/v1/webhooks",
        "webhooks",
        "The org's endpoints",
        "admin of the org",
        200,
        LIST,
        &[],
    ),
    op(
        "delete",
        "/api/v1/webhooks/{id}",
        "webhooks",
        "Remove an endpoint",
        "admin of the org",
        204,
        READ,
        &[],
    ),
    op(
        "get",
        "/api/v1/webhooks/{id}/deliveries",
        "webhooks",
        "Deliveries with every attempt",
        "admin of the org",
        200,
        READ,
        &[],
    ),
    op(
        "get",
        "/v/{id}/master.m3u8",
        "playback",
        "Signed master playlist (exp, kid, sig)",
        "signature",
        200,
        &[403, 404],
        &[],
    ),
    op(
        "get",
        "/v/{id}/{token}/{rendition}/{file}",
        "playback",
        "Media playlist (signed) or init/media segment (immutable)",
        "signature on playlists",
        200,
        &[403, 404, 416],
        &[],
    ),
    op(
        "get",
        "/metrics",
        "operations",
        "Prometheus metrics",
        "none",
        200,
        &[],
        &[],
    ),
    op(
        "get",
        "/healthz",
        "operations",
        "Liveness",
        "none",
        200,
        &[],
        &[],
    ),
    op(
        "get",
        "/readyz",
        "operations",
        "Readiness: 503 while draining or while the database or object store does not answer",
        "none",
        200,
        &[503],
        &[],
    ),
    op(
        "get",
        "/api/v1/openapi.json",
        "operations",
        "This document",
        "none",
        200,
        &[],
        &[],
    ),
];

/// The error codes and their statuses, from the one table (`lectern_wire::Code`).
fn code_table() -> String {
    let mut t = String::from("Stable kebab-case code:");
    for c in lectern_core::error::Code::ALL {
        t.push_str(&format!(
            "\n- `{}` ({}): {}",
            c.as_str(),
            c.status(),
            c.meaning()
        ));
    }
    t
}

/// A status's meaning and the codes answered with it.
fn status_description(status: u16) -> String {
    let codes: Vec<&str> = lectern_core::error::Code::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| c.as_str())
        .collect();
    if codes.is_empty() {
        status_text(status).to_string()
    } else {
        format!("{}; codes: {}", status_text(status), codes.join(", "))
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        400 => "Malformed request",
        401 => "No token, or an invalid one",
        403 => "Right org, wrong role (or not enrolled, or a bad playlist signature)",
        404 => "Unknown, or another org's",
        409 => "Conflicts with the current state",
        410 => "Terminated or expired upload",
        412 => "Unsupported Tus-Resumable",
        413 => "Larger than 2 GiB, or past Upload-Length",
        415 => "Wrong Content-Type",
        416 => "Range not satisfiable",
        422 => "Well-formed but refused content",
        423 => "Another request holds the upload",
        429 => "Rate limited; see Retry-After",
        460 => "Checksum mismatch",
        414 => "URI over 8 KiB",
        431 => "Request headers over 32 KiB",
        503 => "A dependency is unavailable, or the server is at capacity; see Retry-After",
        507 => "Storage full; the offset stays at what is stored",
        _ => "Error",
    }
}

/// Statuses the listener may answer for any operation (`http::reject_malformed`, the
/// connection cap).
const LISTENER: &[u16] = &[400, 414, 431, 503];

/// The tags of the LMS's routes, left out of a build without it.
const LMS_TAGS: &[&str] = &["courses", "progress"];

/// The whole document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for o in OPS
        .iter()
        .filter(|o| cfg!(feature = "lms") || !LMS_TAGS.contains(&o.tag))
    {
        let mut responses = Map::new();
        // The API answers JSON objects; tus, playback, metrics and 204s have their own bodies.
        let success = if o.ok != 204 && o.path.starts_with("/api/v1/") {
            json!({"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}})
        } else {
            json!({"description": "Success"})
        };
        if o.idempotent {
            responses.insert(
                "200".into(),
                json!({"description": "It already existed; nothing changed", "content": {"application/json": {"schema": {"type": "object"}}}}),
            );
        }
        responses.insert(o.ok.to_string(), success);
        // Every JSON body is refused with 415 when it is sent as anything else.
        let json_body: &[u16] = if o.body.is_empty() { &[] } else { &[415] };
        // The rate limiter stands in front of every `/api/` route, this document included.
        let limited: &[u16] = if o.path.starts_with("/api/") {
            &[429]
        } else {
            &[]
        };
        // Every operation passes the listener first: a control character in the URI (400), a
        // URI or header block over its bound (414, 431), a full server (503 over-capacity).
        for e in o
            .errors
            .iter()
            .chain(json_body)
            .chain(limited)
            .chain(LISTENER)
        {
            responses.insert(
                e.to_string(),
                json!({
                    "description": status_description(*e),
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }),
            );
        }
        let params: Vec<Value> = o
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "tags": [o.tag],
            "summary": o.summary,
            "description": format!("Who may call it: {}.", o.auth),
            "parameters": params,
            "responses": responses,
        });
        if o.auth == "none" || o.path.starts_with("/v/") {
            op["security"] = json!([]);
        }
        if !o.body.is_empty() {
            let mut props = Map::new();
            let mut required = Vec::new();
            for f in o.body {
                let (name, ty) = f.split_once(':').expect("name:type");
                let (ty, optional) = match ty.strip_suffix('?') {
                    Some(t) => (t, true),
                    None => (ty, false),
                };
                props.insert(name.into(), json!({"type": ty}));
                if !optional {
                    required.push(name);
                }
            }
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {
                    "type": "object", "properties": props, "required": required,
                }}},
            });
        }
        paths
            .entry(o.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(o.method.into(), op);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Lectern",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Lecture video pipeline: tus ingest, transcode queue, signed HLS playback, courses and progress. Every error is JSON {code, message}.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": code_table(),
                        "enum": lectern_core::error::Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                    },
                    "message": {"type": "string", "description": "What happened and what to do"},
                },
            }},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}
