//! `lectern serve`: wires the configured roles into one process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderName, Method};
use axum::routing::get;
use axum::Router;
use lectern_core::auth::Keys;
use lectern_core::config::Config;
use lectern_core::db::{Db, Schema};
use lectern_core::error;
use lectern_core::ladder::Ladder;
use lectern_core::queue::Queue;
use lectern_ingest::IngestState;
use lectern_origin::{OriginState, Signer};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{self, ApiState};

/// Headers browsers may send to ingest and origin.
const ALLOW_HEADERS: [&str; 13] = [
    "authorization",
    "content-type",
    "range",
    "if-none-match",
    "tus-resumable",
    "upload-length",
    "upload-metadata",
    "upload-offset",
    "upload-concat",
    "upload-defer-length",
    "upload-checksum",
    "x-http-method-override",
    "x-requested-with",
];
/// Headers browsers may read (tus needs Location and the Upload-* headers).
const EXPOSE_HEADERS: [&str; 16] = [
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "content-range",
    "content-length",
    "etag",
    "accept-ranges",
];

/// Starts the runtime and serves until SIGINT/SIGTERM. `schema` says whether the schema is
/// migrated at start-up or only checked (`--no-migrate`).
pub fn run(cfg: Config, schema: Schema) -> anyhow::Result<()> {
    init_tracing();
    lectern_core::readcache::set_enabled(cfg.read_cache);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(cfg, schema))
}

/// `lectern migrate`: applies Lectern's and the queue's migrations (and creates the PostgreSQL
/// extensions the queue needs), then exits. Run it once before a rollout, with DDL rights.
pub fn migrate(cfg: Config) -> anyhow::Result<()> {
    init_tracing();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let url = cfg.database_url();
            Db::open(&url, 1, 0, Schema::Apply).await?;
            Queue::open(&url, 1, Schema::Apply).await?;
            println!(
                "the schema of {} is current",
                lectern_core::db::redact(&url)
            );
            Ok(())
        })
}

/// Logging for every process of the binary (the server and its encoder children alike).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LECTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,apalis=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LECTERN_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(cfg: Config, schema: Schema) -> anyhow::Result<()> {
    // Real histogram buckets (not summaries) so Prometheus can aggregate p95 across nodes.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0,
            ],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("lectern_progress_flush_rows".into()),
            &[1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0],
        )?
        .install_recorder()?;
    // Histograms keep their samples until drained; drain them even when nobody scrapes.
    tokio::spawn({
        let m = metrics.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                m.run_upkeep();
            }
        }
    });
    let keys = Keys::load(cfg.secret.as_deref(), &cfg.data_dir, true)?
        .with_previous(&cfg.previous_secrets);
    let db_url = cfg.database_url();
    let pools = cfg.pools();
    let db = Db::open(&db_url, pools.main, pools.batch, schema).await?;
    let store = lectern_core::storage::open(
        &cfg.storage_url(),
        cfg.s3_endpoint.as_deref(),
        Duration::from_secs(cfg.store_timeout_s),
    )
    .await?;
    let queue = Queue::open(&db_url, pools.queue, schema).await?;
    connection_budget(&db, pools).await;
    let ladder = Ladder::load(cfg.pipeline.as_deref())?;
    let signer = Signer::new(keys.clone());
    let origin_cache = (cfg.has_role("origin") && cfg.origin_cache_mb > 0).then(|| {
        let budget = (cfg.origin_cache_mb as usize) << 20;
        Arc::new(lectern_origin::ObjectCache::new(
            budget,
            16 << 20,
            Duration::from_secs(300),
        ))
    });

    // Set at the first stop signal: /readyz answers 503 from then on.
    let draining = Arc::new(AtomicBool::new(false));
    let ready = Ready {
        db: db.clone(),
        store: store.clone(),
        draining: draining.clone(),
    };
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || readyz(ready.clone())))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        );
    if cfg.has_role("ingest") {
        let expiry = cfg.upload_expiry();
        let st = IngestState::new(
            db.clone(),
            store.clone(),
            keys.clone(),
            queue.clone(),
            cfg.public_url.clone(),
            expiry,
            cfg.upload_part_size,
        )
        .with_buffer_limit(cfg.upload_buffer_mb.saturating_mul(1 << 20))
        .with_quotas(lectern_ingest::Quotas {
            storage_bytes: cfg.org_storage_quota_mb.saturating_mul(1 << 20),
            pending_videos: cfg.org_queue_quota,
        });
        let n = st.recover().await?;
        if n > 0 {
            tracing::info!(uploads = n, "finished interrupted uploads");
        }
        st.clone()
            .spawn_sweeper((expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(600)));
        app = app.merge(lectern_ingest::router(st));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The progress flusher stops only after the listener has drained, so heartbeats that were
    // answered 202 during shutdown are written too.
    #[cfg_attr(not(feature = "lms"), allow(unused_variables))]
    let (flush_stop_tx, flush_stop_rx) = tokio::sync::watch::channel(false);
    #[cfg_attr(not(feature = "lms"), allow(unused_mut))]
    let mut flusher: Option<tokio::task::JoinHandle<()>> = None;
    if cfg.has_role("api") {
        // Without the LMS, learners watch their org's videos and nothing flushes progress.
        #[cfg(not(feature = "lms"))]
        let access: Arc<dyn lectern_core::access::PlaybackAccess> =
            Arc::new(lectern_core::access::OrgWide);
        #[cfg(feature = "lms")]
        let access: Arc<dyn lectern_core::access::PlaybackAccess> = {
            let shared = match &cfg.redis_url {
                Some(url) => Some(lectern_lms::cache::SharedCache::connect(url).await?),
                None => None,
            };
            let cache = lectern_lms::AccessCache::new(Duration::from_secs(30), shared);
            let progress = Arc::new(lectern_lms::progress::Buffer::new(
                db.clone(),
                cfg.complete_ratio,
            ));
            flusher = Some(tokio::spawn({
                let progress = progress.clone();
                let stop = flush_stop_rx.clone();
                async move { progress.run(stop).await }
            }));
            app = app.merge(lectern_lms::router(lectern_lms::LmsState {
                db: db.clone(),
                keys: keys.clone(),
                signer: signer.clone(),
                public_url: cfg.public_url.clone(),
                grace_s: cfg.playback_grace_s as i64,
                progress,
                access: cache.clone(),
                write_behind: cfg.progress_write_behind,
            }));
            Arc::new(lectern_lms::Enrollments {
                db: db.clone(),
                cache,
            })
        };
        app = app.merge(crate::webhooks::router(crate::webhooks::WebhookState {
            db: db.clone(),
            keys: keys.clone(),
            allow_http: cfg.webhook_allow_http,
            egress: crate::egress::Egress::new(&cfg.webhook_allowed_hosts),
        }));
        tokio::spawn(crate::webhooks::run_sender(
            db.clone(),
            crate::egress::Egress::new(&cfg.webhook_allowed_hosts),
            stop_rx.clone(),
        ));
        app = app.merge(api::router(ApiState {
            db: db.clone(),
            keys: keys.clone(),
            signer: signer.clone(),
            public_url: cfg.public_url.clone(),
            grace_s: cfg.playback_grace_s as i64,
            queue: queue.clone(),
            store: store.clone(),
            origin_cache: origin_cache.clone(),
            access,
            cdn_purge_command: cfg.cdn_purge_command.clone(),
        }));
        app = app.merge(lectern_web::router(lectern_web::WebConfig::new(
            &cfg.embed_frame_ancestors,
            cfg.public_url.as_deref(),
            &cfg.web_media_origins,
        )));
    }
    let cors_layer = cors(&cfg.cors_origin)?;
    let mut origin_routes = None;
    let mut fast_origin = None;
    if cfg.has_role("origin") {
        let state = OriginState {
            db: db.clone(),
            store: store.clone(),
            signer,
            // A zero budget admits nothing: every read goes to the store.
            cache: origin_cache.clone().unwrap_or_else(|| {
                Arc::new(lectern_origin::ObjectCache::new(0, 0, Duration::ZERO))
            }),
        };
        fast_origin = Some(Arc::new(
            crate::fastorigin::FastOrigin::new(state.clone(), &cors_layer, &cfg.cors_origin).await,
        ));
        origin_routes = Some(lectern_origin::router(state));
    }
    if cfg.has_role("api") {
        // Status answers are cached only where the database can say when they change.
        if cfg.read_cache && db.backend == lectern_core::db::Backend::Postgres {
            tokio::spawn(lectern_core::statuscache::run_listener(
                db_url.clone(),
                stop_rx.clone(),
            ));
        }
        tokio::spawn(crate::http::gauges(db.clone(), stop_rx.clone()));
        tokio::spawn(lectern_core::queue::run_sweeper(
            db.clone(),
            cfg.queue_retention(),
            stop_rx.clone(),
        ));
    }
    let limiter = Arc::new(crate::http::RateLimiter::new(
        keys.clone(),
        cfg.rate_limit_user_rps,
        cfg.rate_limit_ip_rps,
    ));
    let app = app
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(axum::middleware::from_fn(crate::http::retire_reads_on_write))
        .layer(axum::middleware::from_fn(crate::http::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            limiter,
            crate::http::rate_limit,
        ))
        // Outside the limiter, so 429s count in the error rate too.
        .layer(axum::middleware::from_fn(crate::http::red_metrics))
        .layer(cors_layer.clone())
        .layer(axum::middleware::from_fn(tus_options))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    let id = req
                        .headers()
                        .get(crate::http::REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    // The client as the listener resolved it (behind trusted_proxies, from
                    // X-Forwarded-For).
                    let client = req
                        .extensions()
                        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                        .map(|c| c.0.ip().to_string())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id, client = %client)
                },
            ),
        )
        .layer(axum::middleware::from_fn(crate::http::request_id));
    // The origin is the hot path (every player request): it skips the API's request ids,
    // tracing spans and rate limits, and answers its own errors as JSON.
    let app = match origin_routes {
        Some(o) => o
            .layer(axum::middleware::from_fn(crate::http::red_metrics))
            .layer(cors_layer)
            .merge(app),
        None => app,
    };

    // A second stop signal cuts the worker drain short.
    let (force_tx, force_rx) = tokio::sync::watch::channel(false);
    let (workers_done_tx, workers_done_rx) = tokio::sync::watch::channel(false);
    let workers = if cfg.has_role("worker") {
        // Fail at start, not with every job stuck in the queue, when a plugin is missing.
        lectern_transcoder::pipeline::init()
            .map_err(|e| anyhow::anyhow!("cannot run the worker role: {e}"))?;
        let ctx = lectern_transcoder::WorkerContext {
            db: db.clone(),
            store: store.clone(),
            ladder: Arc::new(ladder),
            scratch_dir: cfg.data_dir.join("scratch"),
            name: format!("{}/{}", hostname(), std::process::id()),
            stopping: Default::default(),
            isolation: lectern_transcoder::isolate::Isolation::current_exe(
                cfg.encoder_memory_mb,
                std::time::Duration::from_secs(cfg.encoder_stall_s.max(1)),
                cfg.encoder_threads,
            )?,
            queue: queue.clone(),
            sources: Default::default(),
            stage_sources: cfg.stage_sources,
        };
        tracing::info!(
            threads = ctx.isolation.threads,
            "encoders use {} threads each (the CPUs this process may use)",
            ctx.isolation.threads
        );
        let run = lectern_transcoder::run_workers(
            ctx,
            queue.clone(),
            cfg.workers,
            wait_stop(stop_rx.clone()),
            cfg.worker_drain_timeout(),
            wait_stop(force_rx),
        );
        Some(tokio::spawn(async move {
            let r = run.await;
            let _ = workers_done_tx.send(true);
            r
        }))
    } else {
        let _ = workers_done_tx.send(true);
        None
    };

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e}; pick another with --listen",
                cfg.listen
            )
        })?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when listening on port 0.
    println!(
        "lectern listening on http://{addr} (roles: {})",
        cfg.roles.join(",")
    );
    tracing::info!(%addr, roles = ?cfg.roles, "listening");
    let limits = crate::listener::Limits {
        max_connections: crate::listener::connection_budget(cfg.max_connections),
        header_timeout: Duration::from_secs(cfg.header_timeout_s),
        drain: Duration::from_secs(60),
        trusted_proxies: Arc::new(cfg.trusted_proxies()),
    };
    let delay = Duration::from_secs(cfg.shutdown_delay_s);
    crate::listener::serve(listener, app, fast_origin, limits, async move {
        shutdown_signal().await;
        draining.store(true, Ordering::SeqCst);
        tracing::info!("stop signal: /readyz now answers 503; draining");
        let _ = stop_tx.send(true);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = force_tx.send(true);
        });
        // Load balancers see the 503 and stop routing here before the listener closes.
        tokio::time::sleep(delay).await;
        // A worker keeps answering /healthz and /metrics while its running attempts finish.
        let mut done = workers_done_rx;
        let _ = done.wait_for(|v| *v).await;
        tracing::info!("closing the listener");
    })
    .await?;
    let _ = flush_stop_tx.send(true);
    if let Some(f) = flusher {
        // Heartbeats still in memory are written before the process exits.
        if let Err(e) = f.await {
            tracing::warn!(error = %e, "progress flusher failed");
        }
    }
    if let Some(w) = workers {
        // The listener closed only after the workers stopped; this collects their result.
        match tokio::time::timeout(Duration::from_secs(60), w).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "workers stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "worker task failed"),
            Err(_) => tracing::warn!(
                "workers did not stop within 60 s; their jobs will be picked up again"
            ),
        }
    }
    Ok(())
}

/// What `/readyz` checks.
#[derive(Clone)]
struct Ready {
    db: Db,
    store: Arc<dyn lectern_core::storage::ObjectStore>,
    draining: Arc<AtomicBool>,
}

/// `GET /readyz`: 200 when the database and the object store answer within 3 s; 503 with a
/// JSON error while the process drains or either does not answer.
async fn readyz(r: Ready) -> axum::response::Response {
    use axum::response::IntoResponse;
    let unready = |code: error::Code, msg: String| {
        error::ApiError::new(code, msg)
            .with_header("retry-after", "5".to_string())
            .into_response()
    };
    if r.draining.load(Ordering::SeqCst) {
        return unready(
            error::Code::Draining,
            "this node is shutting down and takes no new work; send requests to another node"
                .into(),
        );
    }
    let limit = Duration::from_secs(3);
    let db = tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&r.db.pool)).await;
    match db {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return unready(
                error::Code::DatabaseUnavailable,
                format!("the database does not answer: {e}"),
            )
        }
        Err(_) => {
            return unready(
                error::Code::DatabaseUnavailable,
                "the database did not answer within 3 s".into(),
            )
        }
    }
    // Any answer from the store, "no such object" included, shows it is reachable.
    match tokio::time::timeout(limit, r.store.head("readyz-probe")).await {
        Ok(Ok(_)) | Ok(Err(lectern_core::storage::StoreError::NotFound(_))) => {}
        Ok(Err(e)) => {
            return unready(
                error::Code::StoreUnavailable,
                format!("the object store does not answer: {e}"),
            )
        }
        Err(_) => {
            return unready(
                error::Code::StoreUnavailable,
                "the object store did not answer within 3 s".into(),
            )
        }
    }
    axum::Json(serde_json::json!({"status": "ready"})).into_response()
}

/// Warns at start-up when this process's pools could take more PostgreSQL connections than
/// the server has left for it (see "Connection budget" in docs/DESIGN.md).
async fn connection_budget(db: &lectern_core::db::Db, pools: lectern_core::config::Pools) {
    if db.backend != lectern_core::db::Backend::Postgres {
        return;
    }
    let mine = pools.total();
    let row: Result<(String, String, i64), _> = sqlx::query_as(
        "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections'), \
         (SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .fetch_one(&db.pool)
    .await;
    let Ok((max, reserved, open)) = row else {
        return;
    };
    let (max, reserved): (i64, i64) = (max.parse().unwrap_or(100), reserved.parse().unwrap_or(3));
    let usable = max - reserved;
    tracing::info!(
        pools = mine,
        server_max = max,
        open_now = open,
        "PostgreSQL connection budget: this process may open up to {mine} connections"
    );
    if i64::from(mine) > usable - open + 2 {
        tracing::warn!(
            "this process's pools (db_max_connections {} + db_batch_connections {} + queue_db_connections {} + {} status listener = {mine}) \
             may exceed what PostgreSQL has left ({usable} usable, {open} open now); lower the pools, \
             raise max_connections, or put PgBouncer (session mode) in front",
            pools.main, pools.batch, pools.queue, pools.listen
        );
    }
}

/// tus clients discover the server with OPTIONS, which the CORS layer answers as a preflight;
/// this adds the tus headers to those answers.
async fn tus_options(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let is_tus = req.method() == Method::OPTIONS && req.uri().path().starts_with("/files");
    let mut resp = next.run(req).await;
    if is_tus {
        lectern_ingest::decorate_options(&mut resp);
    }
    resp
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn cors(origin: &str) -> anyhow::Result<CorsLayer> {
    let allow = if origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origin
                .split(',')
                .map(|o| o.trim().parse())
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::PUT,
        ])
        .allow_headers(ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(
            EXPOSE_HEADERS
                .map(HeaderName::from_static)
                .into_iter()
                .chain([header::CONTENT_TYPE])
                .collect::<Vec<_>>(),
        )
        .max_age(std::time::Duration::from_secs(86400)))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
