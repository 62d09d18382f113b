//! Playback requests answered without the router: every player and CDN request is a GET of a
//! playlist or a segment, and for those the axum router and the tower stack (routing, request
//! extensions, boxed middleware futures, a metrics registry lookup per request) cost more CPU
//! than the origin's own work (an HMAC check and a cache lookup). The listener hands a
//! `GET`/`HEAD` under `/v/` here first; what the origin declines (other methods, percent-escaped
//! paths, unknown shapes) goes on to the router, which answers it as before.
//!
//! The answers are the router's to the byte: the same handlers, the same CORS headers (taken
//! from the very `CorsLayer` the router uses, once per allowed origin at start), the same
//! request metrics (through handles registered once).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response};
use lectern_origin::{OriginState, Route};
use tower::{Layer, ServiceExt};
use tower_http::cors::CorsLayer;

/// The origin's direct path: its state, its CORS answers and its metric handles.
pub struct FastOrigin {
    state: OriginState,
    cors: Cors,
    metrics: Metrics,
    /// Where the handlers' own I/O belongs: database and object-store connections are pooled
    /// for the whole process, so one opened while a playback lane serves must still be
    /// driven by the main runtime, not by that lane.
    runtime: tokio::runtime::Handle,
}

/// The headers the router's CORS layer adds to a simple (non-preflight) request, by origin.
struct Cors {
    /// No `Origin` header.
    none: HeaderMap,
    /// Any origin (`cors_origin = "*"`), or an origin not allowed.
    other: HeaderMap,
    /// Each allowed origin of a list.
    listed: HashMap<Vec<u8>, HeaderMap>,
}

impl Cors {
    async fn from_layer(layer: &CorsLayer, cors_origin: &str) -> Self {
        let probe = |origin: Option<String>| {
            let layer = layer.clone();
            async move {
                let svc = layer.layer(tower::service_fn(|_: Request<Body>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
                }));
                let mut req = Request::get("/v/probe");
                if let Some(o) = origin {
                    req = req.header("origin", o);
                }
                let res = svc
                    .oneshot(req.body(Body::empty()).expect("static request"))
                    .await
                    .expect("infallible");
                res.headers().clone()
            }
        };
        let listed = if cors_origin == "*" {
            HashMap::new()
        } else {
            let mut m = HashMap::new();
            for o in cors_origin.split(',').map(str::trim) {
                m.insert(o.as_bytes().to_vec(), probe(Some(o.to_string())).await);
            }
            m
        };
        Self {
            none: probe(None).await,
            other: probe(Some("https://not-an-allowed-origin.invalid".into())).await,
            listed,
        }
    }

    fn for_request(&self, origin: Option<&HeaderValue>) -> &HeaderMap {
        match origin {
            None => &self.none,
            Some(o) => self.listed.get(o.as_bytes()).unwrap_or(&self.other),
        }
    }
}

/// `lectern_http_requests_total` and `lectern_http_request_duration_seconds` for the two
/// routes, registered once: the router's middleware looks each up by name and labels per request.
struct Metrics {
    /// By route, method (GET, HEAD) and status class (1xx … 5xx).
    requests: [[[metrics::Counter; 5]; 2]; 2],
    /// By route and method.
    durations: [[metrics::Histogram; 2]; 2],
}

impl Metrics {
    fn new() -> Self {
        let routes = [Route::Master.template(), Route::File.template()];
        let methods = ["GET", "HEAD"];
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        Self {
            requests: routes.map(|route| {
                methods.map(|method| {
                    classes.map(|class| {
                        metrics::counter!("lectern_http_requests_total", "method" => method, "route" => route, "status" => class)
                    })
                })
            }),
            durations: routes.map(|route| {
                methods.map(|method| {
                    metrics::histogram!("lectern_http_request_duration_seconds", "method" => method, "route" => route)
                })
            }),
        }
    }
}

impl FastOrigin {
    /// The direct path for `state`, answering CORS as `layer` (built from `cors_origin`) does.
    pub async fn new(state: OriginState, layer: &CorsLayer, cors_origin: &str) -> Self {
        Self {
            state,
            cors: Cors::from_layer(layer, cors_origin).await,
            metrics: Metrics::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// The runtime the origin's state belongs to (the one that built it).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The answer to `req` when the origin takes it directly; `None` sends it to the router.
    pub async fn respond<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        self.respond_parts(
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
        )
        .await
    }

    /// [`FastOrigin::respond`] from a request's parts, for the connection loop that parses
    /// requests itself.
    pub async fn respond_parts(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        req_headers: &HeaderMap,
    ) -> Option<Response<Body>> {
        if !path.starts_with("/v/") {
            return None;
        }
        let started = std::time::Instant::now();
        let (route, mut res) =
            lectern_origin::respond_direct(&self.state, method, path, query, req_headers).await?;
        // As `HeaderMap::extend` (what the router's CorsLayer does), without a map per request:
        // a name's first value replaces the handler's, the rest are appended.
        let cors = self
            .cors
            .for_request(req_headers.get(axum::http::header::ORIGIN));
        let headers = res.headers_mut();
        for name in cors.keys() {
            let mut values = cors.get_all(name).iter();
            if let Some(first) = values.next() {
                headers.insert(name.clone(), first.clone());
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
        let r = route as usize;
        let m = usize::from(method == Method::HEAD);
        let class = (res.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        self.metrics.requests[r][m][class].increment(1);
        self.metrics.durations[r][m].record(started.elapsed().as_secs_f64());
        Some(res)
    }
}
