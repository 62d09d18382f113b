//! The one place that turns errors into HTTP responses: JSON `{code, message}` with a stable code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use lectern_wire::Code;

/// An error as the client sees it: an HTTP status, a stable kebab-case code and a human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status sent with the body.
    pub status: StatusCode,
    /// Stable, kebab-case machine code (its status is [`Code::status`] unless overridden).
    pub code: Code,
    /// What happened and what to do about it.
    pub message: String,
    /// Extra headers (e.g. `Tus-Resumable`) that protocol handlers need on error responses.
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// Builds an error with the given code (answered with its status) and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.status())
                .expect("the code table holds valid statuses"),
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// Answers with `status` instead of the code's own: only where a framework chose the
    /// status (a rejected JSON body, a refused framework response).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 401: no token or an invalid one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }

    /// 403: the right org but the wrong role.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// 404 for anything unknown or belonging to another org.
    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }

    /// 500 for unexpected failures; the detail is logged, not sent.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            Code::Internal,
            "an internal error occurred; retry later, and report it if it persists",
        )
    }

    /// 507: the data folder or the object store has no room; nothing past the stored offset
    /// was kept.
    pub fn storage_full() -> Self {
        Self::new(
            Code::StorageFull,
            "the server's storage is full; nothing past the reported offset was kept. Resume from HEAD's offset once an operator has freed space",
        )
        .with_header("retry-after", "60")
    }

    /// 503 for a dependency (database, store) that is down; clients should retry.
    pub fn unavailable(err: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "dependency unavailable");
        Self::new(
            Code::Unavailable,
            "a storage or database dependency is unavailable; retry shortly",
        )
        .with_header("retry-after", "2")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            code: self.code.as_str(),
            message: &self.message,
        })
        .unwrap_or_default();
        let mut resp = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        use crate::db::DbError;
        match e {
            DbError::Sql(e) => e.into(),
            DbError::NotFound(what) => ApiError::not_found(what),
            // A lost fenced write means what its caller says (an upload's offset: 409
            // offset-mismatch, mapped in ingest); unmapped, it is a bug here.
            DbError::Moved(what) => {
                ApiError::internal(format!("{what} moved under a fenced write"))
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // The database is away or half-away (a restart drops connections mid-handshake).
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => ApiError::unavailable(e),
            // SQLITE_FULL, PostgreSQL's disk_full: the data folder has no room.
            sqlx::Error::Database(ref d)
                if d.code()
                    .is_some_and(|c| c.as_ref() == "13" || c.as_ref() == "53100") =>
            {
                tracing::error!(error = %e, "the database's disk is full");
                ApiError::storage_full()
            }
            // Deadlock, serialization failure, too many connections, shutting down: transient.
            sqlx::Error::Database(ref d)
                if d.code().is_some_and(|c| {
                    ["40P01", "40001", "53300", "57P01", "57P03"].contains(&c.as_ref())
                }) =>
            {
                ApiError::unavailable(e)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        match e {
            crate::storage::StoreError::NotFound(_) => ApiError::not_found("object"),
            crate::storage::StoreError::InvalidRange => ApiError::new(
                Code::RangeNotSatisfiable,
                "the requested byte range lies outside the object",
            ),
            // ENOSPC, EDQUOT and EFBIG: the data folder is full. Nothing past the last
            // committed part counts, so the client resumes from HEAD's offset once there is room.
            crate::storage::StoreError::Io(ref io)
                if io.kind() == std::io::ErrorKind::StorageFull
                    || io.kind() == std::io::ErrorKind::QuotaExceeded
                    || io.kind() == std::io::ErrorKind::FileTooLarge =>
            {
                tracing::error!(error = %io, "the object store is full");
                ApiError::storage_full()
            }
            other => ApiError::unavailable(other),
        }
    }
}

/// Fallback for unknown routes, so even the router's own 404 is JSON.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("route")
}

/// Fallback for a known path with an unsupported method.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        "this method is not supported on this path",
    )
}

/// `axum::Json` whose rejections (bad syntax, wrong fields, wrong content type) are the
/// contract's JSON `{code, message}` with code `invalid-body`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(ApiError::new(
                Code::InvalidBody,
                format!(
                    "{}; send a JSON body with the documented fields",
                    e.body_text()
                ),
            )
            .with_status(e.status())),
        }
    }
}

/// A malformed header or parameter: 400 with the parser's code.
impl From<lectern_wire::Invalid> for ApiError {
    fn from(e: lectern_wire::Invalid) -> Self {
        ApiError::new(e.code, e.message)
    }
}
