//! Progress load benchmark: many learners on keep-alive connections send a heartbeat every
//! 10 s (and now and then read their course progress) against Lectern on PostgreSQL, first with
//! write-behind, then with naive per-request upserts, in one run. Reports p50/p95/p99, errors,
//! database transactions per second, and each mode's saturated heartbeat capacity.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/progress --lectern target/release/lectern [--learners 10000] [--secs 60]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use lectern_bench::load::{
    course_with_lessons, db_url, percentile, pg, raise_nofile, spawn_on_fresh_pg, xacts, Conn,
    FreshServer,
};
use lectern_bench::Server;
use lectern_core::auth::{Keys, Role};

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
struct Args {
    /// The lectern binary (release build).
    #[arg(long, default_value = "target/release/lectern")]
    lectern: PathBuf,
    /// Concurrent learners, one keep-alive connection each.
    #[arg(long, default_value_t = 10_000)]
    learners: usize,
    /// Seconds between a learner's heartbeats.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Seconds of measured load per mode (after one interval of ramp-up).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Connections for the saturation (capacity) runs.
    #[arg(long, default_value_t = 64)]
    saturate: usize,
    /// PostgreSQL admin URL; a fresh database is created per mode.
    #[arg(
        long,
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
}

struct Setup {
    server: Server,
    addr: String,
    db: String,
    course: String,
    lessons: Vec<String>,
}

async fn setup(args: &Args, write_behind: bool) -> anyhow::Result<Setup> {
    let FreshServer {
        server,
        addr,
        api,
        db,
        admin,
    } = spawn_on_fresh_pg(
        &args.lectern,
        &args.postgres,
        "api",
        SECRET,
        &[("LECTERN_PROGRESS_WRITE_BEHIND", write_behind.to_string())],
    )?;
    let (course, lessons) = course_with_lessons(&api, &admin, "Load", 10).await?;
    // Enrollments straight into the table: setup, not the thing measured.
    pg(
        &db_url(&args.postgres, &db),
        &format!(
            "INSERT INTO enrollments (course_id, user_id, org, created_at) \
             SELECT '{course}', 'u' || g, 'bench', 0 FROM generate_series(0, {}) g",
            args.learners.max(args.saturate)
        ),
    )?;
    Ok(Setup {
        server,
        addr,
        db,
        course,
        lessons,
    })
}

struct Outcome {
    requests: usize,
    errors: u64,
    p50: f64,
    p95: f64,
    p99: f64,
    rps: f64,
    xact_s: f64,
    rss: f64,
}

/// 10,000 learners at one heartbeat per interval, every 20th request a course-progress read.
async fn learners(args: &Args, s: &Setup) -> anyhow::Result<Outcome> {
    let keys = Keys::from_secret(SECRET);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_secs(2);
    let ramp = Duration::from_secs_f64(args.interval);
    let end = start + ramp + Duration::from_secs(args.secs);
    let measure_from = start + ramp;
    let mut tasks = Vec::with_capacity(args.learners);
    for i in 0..args.learners {
        let token = keys.mint(&format!("u{i}"), "bench", Role::Learner, 86_400);
        let addr = s.addr.clone();
        let lesson = s.lessons[i % s.lessons.len()].clone();
        let course = s.course.clone();
        let errors = errors.clone();
        let interval = args.interval;
        let n = args.learners;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            // Stagger the first heartbeat across one interval, as real players do.
            let first = start + Duration::from_secs_f64(interval * i as f64 / n as f64);
            tokio::time::sleep_until(first.into()).await;
            let Ok(mut c) = Conn::open(&addr).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return lat;
            };
            let mut k = 0u64;
            let mut next = first;
            while next < end {
                tokio::time::sleep_until(next.into()).await;
                let t = Instant::now();
                let pos = (k as f64 * interval) % 3000.0;
                let res = if k % 20 == 19 {
                    c.request(
                        "GET",
                        &format!("/api/v1/courses/{course}/progress"),
                        &token,
                        "",
                    )
                    .await
                } else {
                    let body = format!(
                        r#"{{"position_s":{pos},"watched":[[{},{pos}]]}}"#,
                        (pos - interval).max(0.0)
                    );
                    c.request(
                        "POST",
                        &format!("/api/v1/lessons/{lesson}/progress"),
                        &token,
                        &body,
                    )
                    .await
                };
                let ok = matches!(res, Ok(200) | Ok(202));
                if t >= measure_from {
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if res.is_err() {
                    match Conn::open(&addr).await {
                        Ok(nc) => c = nc,
                        Err(_) => return lat,
                    }
                }
                k += 1;
                next += Duration::from_secs_f64(interval);
            }
            lat
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let x0 = xacts(&args.postgres, &s.db);
    let t0 = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = t0.elapsed().as_secs_f64();
    let x1 = xacts(&args.postgres, &s.db);
    all.sort_unstable();
    Ok(Outcome {
        requests: all.len(),
        errors: errors.load(Ordering::Relaxed),
        p50: percentile(&all, 0.50),
        p95: percentile(&all, 0.95),
        p99: percentile(&all, 0.99),
        rps: all.len() as f64 / secs,
        xact_s: (x1 - x0) / secs,
        rss: s.server.peak_rss_mib(),
    })
}

/// Heartbeats back to back on `saturate` connections for 15 s: the most this mode sustains.
async fn capacity(args: &Args, s: &Setup) -> anyhow::Result<f64> {
    let keys = Keys::from_secret(SECRET);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(15);
    let mut tasks = Vec::new();
    for i in 0..args.saturate {
        let token = keys.mint(&format!("u{i}"), "bench", Role::Learner, 86_400);
        let addr = s.addr.clone();
        let lesson = s.lessons[i % s.lessons.len()].clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = Conn::open(&addr).await else {
                return;
            };
            let mut pos = 0.0;
            while Instant::now() < stop {
                pos += 10.0;
                let body = format!(
                    r#"{{"position_s":{pos},"watched":[[{},{pos}]]}}"#,
                    pos - 10.0
                );
                if let Ok(202) = c
                    .request(
                        "POST",
                        &format!("/api/v1/lessons/{lesson}/progress"),
                        &token,
                        &body,
                    )
                    .await
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    let mut rows = Vec::new();
    for write_behind in [true, false] {
        let name = if write_behind {
            "write-behind"
        } else {
            "naive upsert"
        };
        let s = setup(&args, write_behind).await?;
        eprintln!("{name}: {} learners for {} s…", args.learners, args.secs);
        let o = learners(&args, &s).await?;
        eprintln!("{name}: saturating with {} connections…", args.saturate);
        let cap = capacity(&args, &s).await?;
        eprintln!(
            "{name}: {} req ({:.0}/s), errors {}, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, {:.0} xact/s, capacity {cap:.0} heartbeats/s",
            o.requests, o.rps, o.errors, o.p50, o.p95, o.p99, o.xact_s
        );
        let db = s.db.clone();
        drop(s);
        let _ = pg(
            &args.postgres,
            &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        );
        rows.push((name, o, cap));
    }
    println!(
        "\n{} learners, heartbeat every {} s, {} s measured, PostgreSQL on the same 2 cores\n",
        args.learners, args.interval, args.secs
    );
    println!("| mode | requests/s | p50 ms | p95 ms | p99 ms | errors | DB xact/s | peak RSS MiB | capacity (heartbeats/s) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, o, cap) in &rows {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {cap:.0} |",
            o.rps, o.p50, o.p95, o.p99, o.errors, o.xact_s, o.rss
        );
    }
    println!(
        "\ncapacity ratio write-behind / naive: {:.2}×",
        rows[0].2 / rows[1].2.max(1.0)
    );
    Ok(())
}
