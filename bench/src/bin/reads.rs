//! API reads at the seeds' scale, on PostgreSQL: admins polling transcode status every second,
//! learners listing courses and lessons and reading their progress, and 10,000 learners'
//! heartbeats, all at once (open loop, latency per class); then the saturated capacity of
//! status reads and of course reads on `--saturate` connections (closed loop). The load
//! generator shares the machine's cores with Lectern and PostgreSQL.
//!
//! cargo build --release -p lectern -p lectern-bench
//! target/release/reads --lectern target/release/lectern [--learners 10000] [--secs 30]

use std::collections::HashMap;
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
    /// Learners sending a heartbeat every 10 s, one keep-alive connection each.
    #[arg(long, default_value_t = 10_000)]
    learners: usize,
    /// Admin dashboards, each polling the status of every video of a page (10) and the job
    /// list once a second.
    #[arg(long, default_value_t = 20)]
    admins: usize,
    /// Learner reads per second (course list, lesson list, lesson progress, in turn).
    #[arg(long, default_value_t = 2_000)]
    learner_reads: u64,
    /// Seconds of measured mixed load (after 10 s of ramp-up).
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Connections for the capacity runs.
    #[arg(long, default_value_t = 64)]
    saturate: usize,
    /// Seconds per capacity run.
    #[arg(long, default_value_t = 10)]
    saturate_secs: u64,
    /// PostgreSQL admin URL; a fresh database is created for the run.
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
    courses: Vec<String>,
    lessons: Vec<String>,
    videos: Vec<String>,
}

/// A server on a fresh database with 5 courses of 10 lessons (every learner enrolled in all),
/// and 50 queued videos (no worker runs, so they stay queued and their status carries a queue
/// position).
async fn setup(args: &Args, read_cache: bool) -> anyhow::Result<Setup> {
    let FreshServer {
        server,
        addr,
        api,
        db,
        admin,
    } = spawn_on_fresh_pg(
        &args.lectern,
        &args.postgres,
        "api,ingest",
        SECRET,
        &[("LECTERN_READ_CACHE", read_cache.to_string())],
    )?;
    let http = reqwest::Client::new();
    let (mut courses, mut lessons) = (Vec::new(), Vec::new());
    for c in 0..5 {
        let (course, ids) = course_with_lessons(&api, &admin, &format!("Course {c}"), 10).await?;
        lessons.extend(ids);
        courses.push(course);
    }
    let users = args.learners.max(args.saturate) + 1_000;
    for course in &courses {
        pg(
            &db_url(&args.postgres, &db),
            &format!(
                "INSERT INTO enrollments (course_id, user_id, org, created_at) \
                 SELECT '{course}', 'u' || g, 'bench', 0 FROM generate_series(0, {users}) g"
            ),
        )?;
    }
    let mut videos = Vec::new();
    for _ in 0..50 {
        let r = http
            .post(format!("{}/files/", server.base))
            .bearer_auth(&admin)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", 4)
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "create: {}", r.status());
        let loc = r.headers()["location"].to_str()?.to_string();
        let r = http
            .patch(&loc)
            .bearer_auth(&admin)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", 0)
            .header("Content-Type", "application/offset+octet-stream")
            .body("lect")
            .send()
            .await?;
        anyhow::ensure!(r.status() == 204, "patch: {}", r.status());
        videos.push(loc.rsplit('/').next().unwrap_or_default().to_string());
    }
    Ok(Setup {
        server,
        addr,
        db,
        courses,
        lessons,
        videos,
    })
}

/// Latencies (µs) and errors of one class of request.
#[derive(Default)]
struct Class {
    lat: Vec<u64>,
    errors: u64,
}

/// One request of a class on a connection, timed; reconnects after a transport error.
async fn timed(
    c: &mut Conn,
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<u64, ()> {
    let t = Instant::now();
    let res = c.request(method, path, token, body).await;
    let us = t.elapsed().as_micros() as u64;
    match res {
        Ok(200 | 202) => Ok(us),
        Ok(_) => Err(()),
        Err(_) => {
            if let Ok(nc) = Conn::open(addr).await {
                *c = nc;
            }
            Err(())
        }
    }
}

/// A request generator: `who` sends `make(k)` every `period`, staggered by `offset`, until
/// `end`, recording only from `measure_from`.
#[allow(clippy::too_many_arguments)]
fn spawn_user(
    addr: String,
    token: String,
    offset: Duration,
    period: Duration,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    make: impl Fn(u64) -> (&'static str, &'static str, String, String) + Send + 'static,
) -> tokio::task::JoinHandle<HashMap<&'static str, Class>> {
    tokio::spawn(async move {
        let mut out: HashMap<&'static str, Class> = HashMap::new();
        let first = start + offset;
        tokio::time::sleep_until(first.into()).await;
        let Ok(mut c) = Conn::open(&addr).await else {
            out.entry("connect").or_default().errors += 1;
            return out;
        };
        let mut next = first;
        let mut k = 0u64;
        while next < end {
            tokio::time::sleep_until(next.into()).await;
            let (class, method, path, body) = make(k);
            let t = Instant::now();
            let r = timed(&mut c, &addr, method, &path, &token, &body).await;
            if t >= measure_from {
                let e = out.entry(class).or_default();
                match r {
                    Ok(us) => e.lat.push(us),
                    Err(()) => e.errors += 1,
                }
            }
            k += 1;
            next += period;
        }
        out
    })
}

async fn mixed(args: &Args, s: &Setup) -> anyhow::Result<Vec<(String, usize, Class)>> {
    let keys = Keys::from_secret(SECRET);
    let start = Instant::now() + Duration::from_secs(2);
    let ramp = Duration::from_secs(10);
    let measure_from = start + ramp;
    let end = measure_from + Duration::from_secs(args.secs);
    let mut tasks = Vec::new();
    let hb = Duration::from_secs(10);
    for i in 0..args.learners {
        let lesson = s.lessons[i % s.lessons.len()].clone();
        let offset = hb.mul_f64(i as f64 / args.learners as f64);
        tasks.push(spawn_user(
            s.addr.clone(),
            keys.mint(&format!("u{i}"), "bench", Role::Learner, 86_400),
            offset,
            hb,
            start,
            measure_from,
            end,
            move |k| {
                let pos = (k * 10) as f64 % 3000.0;
                let body = format!(
                    r#"{{"position_s":{pos},"watched":[[{},{pos}]]}}"#,
                    (pos - 10.0).max(0.0)
                );
                (
                    "heartbeat",
                    "POST",
                    format!("/api/v1/lessons/{lesson}/progress"),
                    body,
                )
            },
        ));
    }
    // Learner readers: 100 connections sharing the read rate, each a different learner.
    let readers = 100usize;
    let period = Duration::from_secs_f64(readers as f64 / args.learner_reads.max(1) as f64);
    for i in 0..readers {
        let courses = s.courses.clone();
        let lessons = s.lessons.clone();
        tasks.push(spawn_user(
            s.addr.clone(),
            keys.mint(
                &format!("u{}", args.learners + i),
                "bench",
                Role::Learner,
                86_400,
            ),
            period.mul_f64(i as f64 / readers as f64),
            period,
            start,
            measure_from,
            end,
            move |k| {
                let n = (k as usize).wrapping_add(i);
                let path = match k % 3 {
                    0 => "/api/v1/courses".to_string(),
                    1 => format!("/api/v1/courses/{}/lessons", courses[n % courses.len()]),
                    _ => format!("/api/v1/lessons/{}/progress", lessons[n % lessons.len()]),
                };
                let class = match k % 3 {
                    0 => "list courses",
                    1 => "list lessons",
                    _ => "lesson progress",
                };
                (class, "GET", path, String::new())
            },
        ));
    }
    // Admin dashboards: every second the job list and the status of each video on the page.
    let per_second = 11u64;
    for a in 0..args.admins {
        let videos = s.videos.clone();
        let period = Duration::from_secs(1).div_f64(per_second as f64);
        tasks.push(spawn_user(
            s.addr.clone(),
            keys.mint(&format!("admin{a}"), "bench", Role::Admin, 86_400),
            Duration::from_secs(1).mul_f64(a as f64 / args.admins.max(1) as f64),
            period,
            start,
            measure_from,
            end,
            move |k| {
                let slot = k % per_second;
                if slot == 0 {
                    (
                        "job list",
                        "GET",
                        "/api/v1/admin/jobs?state=queued&limit=20".to_string(),
                        String::new(),
                    )
                } else {
                    let v = &videos[(a * 10 + slot as usize) % videos.len()];
                    (
                        "video status",
                        "GET",
                        format!("/api/v1/videos/{v}"),
                        String::new(),
                    )
                }
            },
        ));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let x0 = xacts(&args.postgres, &s.db);
    let mut all: HashMap<&'static str, Class> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap_or_default() {
            let e = all.entry(k).or_default();
            e.lat.extend(v.lat);
            e.errors += v.errors;
        }
    }
    let x1 = xacts(&args.postgres, &s.db);
    eprintln!(
        "database: {:.0} transactions/s during the mixed load",
        (x1 - x0) / args.secs as f64
    );
    let mut rows: Vec<(String, usize, Class)> = all
        .into_iter()
        .map(|(k, mut v)| {
            v.lat.sort_unstable();
            (k.to_string(), v.lat.len(), v)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

/// `paths` in turn, back to back on `saturate` connections: requests per second answered 200.
async fn capacity(args: &Args, s: &Setup, role: Role, paths: Vec<String>) -> (f64, f64) {
    let keys = Keys::from_secret(SECRET);
    let stop = Instant::now() + Duration::from_secs(args.saturate_secs);
    let paths = Arc::new(paths);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.saturate {
        let token = keys.mint(&format!("u{i}"), "bench", role, 86_400);
        let addr = s.addr.clone();
        let paths = paths.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let Ok(mut c) = Conn::open(&addr).await else {
                return lat;
            };
            let mut k = i;
            while Instant::now() < stop {
                let path = &paths[k % paths.len()];
                if let Ok(us) = timed(&mut c, &addr, "GET", path, &token, "").await {
                    done.fetch_add(1, Ordering::Relaxed);
                    lat.push(us);
                }
                k += 1;
            }
            lat
        }));
    }
    let t0 = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    lat.sort_unstable();
    (
        done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64(),
        percentile(&lat, 0.95),
    )
}

/// What one mode measured.
struct Measured {
    mode: &'static str,
    rows: Vec<(String, usize, Class)>,
    status: (f64, f64),
    course: (f64, f64),
    rss: f64,
    cache: Vec<String>,
}

/// `lectern_cache_requests_total` lines of the server's metrics: which tier answered what.
async fn cache_counts(base: &str) -> Vec<String> {
    let text = match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| l.starts_with("lectern_cache_requests_total{"))
        .map(str::to_string)
        .collect()
}

async fn measure(args: &Args, mode: &'static str, read_cache: bool) -> anyhow::Result<Measured> {
    let s = setup(args, read_cache).await?;
    eprintln!(
        "{mode}: {} learners' heartbeats, {} learner reads/s, {} admin dashboards, {} s…",
        args.learners, args.learner_reads, args.admins, args.secs
    );
    let rows = mixed(args, &s).await?;
    let status: Vec<String> = s
        .videos
        .iter()
        .map(|v| format!("/api/v1/videos/{v}"))
        .collect();
    let mut course_reads = vec!["/api/v1/courses".to_string()];
    course_reads.extend(
        s.courses
            .iter()
            .map(|c| format!("/api/v1/courses/{c}/lessons")),
    );
    eprintln!("{mode}: status reads on {} connections…", args.saturate);
    let status = capacity(args, &s, Role::Admin, status).await;
    eprintln!("{mode}: course reads on {} connections…", args.saturate);
    let course = capacity(args, &s, Role::Learner, course_reads).await;
    let cache = cache_counts(&s.server.base).await;
    let rss = s.server.peak_rss_mib();
    let db = s.db.clone();
    drop(s);
    let _ = pg(
        &args.postgres,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    Ok(Measured {
        mode,
        rows,
        status,
        course,
        rss,
        cache,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    let mut all = Vec::new();
    for (mode, on) in [("read cache", true), ("no cache", false)] {
        all.push(measure(&args, mode, on).await?);
    }
    println!(
        "\nMixed load on PostgreSQL ({} s measured, same 2 cores as the load generator)\n",
        args.secs
    );
    println!("| mode | request | requests/s | p50 ms | p95 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    for m in &all {
        let (mut total, mut lat) = (0usize, Vec::new());
        for (name, n, c) in &m.rows {
            println!(
                "| {} | {name} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
                m.mode,
                *n as f64 / args.secs as f64,
                percentile(&c.lat, 0.5),
                percentile(&c.lat, 0.95),
                percentile(&c.lat, 0.99),
                c.errors
            );
            total += n;
            lat.extend(c.lat.iter().copied());
        }
        lat.sort_unstable();
        println!(
            "| {} | **all** | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            m.mode,
            total as f64 / args.secs as f64,
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            percentile(&lat, 0.99),
            m.rows.iter().map(|r| r.2.errors).sum::<u64>()
        );
    }
    println!(
        "\nCapacity on {} connections ({} s each):\n",
        args.saturate, args.saturate_secs
    );
    println!("| mode | reads | requests/s | p95 ms |");
    println!("|---|---|---|---|");
    for m in &all {
        println!(
            "| {} | video status (admin) | {:.0} | {:.1} |",
            m.mode, m.status.0, m.status.1
        );
        println!(
            "| {} | course + lesson lists (learner) | {:.0} | {:.1} |",
            m.mode, m.course.0, m.course.1
        );
    }
    for m in &all {
        println!("\n{}: peak RSS {:.0} MiB; cache counters:", m.mode, m.rss);
        for l in &m.cache {
            println!("    {l}");
        }
    }
    Ok(())
}
