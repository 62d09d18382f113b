//! The fleet on real separate hosts: network namespaces with their own addresses on one bridge
//! (10.213.0.0/24, no uplink). PostgreSQL and Redis on one host, the S3 server on another,
//! three web nodes, three worker nodes, and nginx as the round-robin load balancer and CDN
//! cache in front of the web nodes. The test talks to the fleet from the bridge's address only
//! through nginx, as users do. It proves: uploads need no sticky sessions (and survive a web
//! node cut off mid-PATCH), jobs spread over the workers, the KEDA query counts the work, a
//! killed and a cut-off worker's jobs finish elsewhere within 60 s with the stale attempt
//! publishing nothing, CDN hits without serving a playlist to the wrong viewer, and drain on
//! SIGTERM. Needs root; everything is torn down even when an assertion fails.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_segment, walk_tree, TestApp, SECRET};
use futures::StreamExt;
use lectern_core::auth::{Keys, Role};
use serde_json::Value;

const NET: &str = "10.213.0";
const DB: &str = "10.213.0.10";
const S3: &str = "10.213.0.11";
const LB: &str = "10.213.0.5";
const BUCKET: &str = "lectern-multihost";

/// Hosts, the bridge between them and the helper processes; removes all of it on drop.
struct Net {
    tag: String,
    bridge: String,
    hosts: Vec<String>,
    procs: Vec<Child>,
    dir: tempfile::TempDir,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new() -> Net {
        let tag = format!("lx{}", std::process::id() % 100_000);
        let bridge = format!("{tag}br");
        let net = Net {
            tag,
            bridge: bridge.clone(),
            hosts: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        sh(&["ip", "link", "add", "name", &bridge, "type", "bridge"]);
        sh(&["ip", "addr", "add", &format!("{NET}.1/24"), "dev", &bridge]);
        sh(&["ip", "link", "set", &bridge, "up"]);
        net
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// A host with its own network stack and address, and its own hostname as Lectern reads
    /// it (`ip netns exec` mounts /etc/netns/NS/hostname over /etc/hostname).
    fn host(&mut self, host: &str, ip: &str) {
        let ns = self.ns(host);
        sh(&["ip", "netns", "add", &ns]);
        self.hosts.push(host.to_string());
        let (outer, inner) = (
            format!("{}{host}a", self.tag),
            format!("{}{host}b", self.tag),
        );
        sh(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ]);
        sh(&["ip", "link", "set", &outer, "master", &self.bridge, "up"]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &inner,
        ]);
        sh(&["ip", "-n", &ns, "link", "set", &inner, "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hostname"), format!("{host}\n")).unwrap();
    }

    /// Cuts (`false`) or restores (`true`) a host's only link: its packets stop, as in a
    /// network partition; its processes keep running.
    fn link(&self, host: &str, up: bool) {
        let inner = format!("{}{host}b", self.tag);
        sh(&[
            "ip",
            "-n",
            &self.ns(host),
            "link",
            "set",
            &inner,
            if up { "up" } else { "down" },
        ]);
    }

    /// A command run on `host`.
    fn cmd(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// Starts a helper process on `host` that lives until the test ends.
    fn spawn(&mut self, host: &str, program: &str, args: &[&str]) {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{host}-{}.log", self.procs.len())),
        )
        .unwrap();
        let child = self
            .cmd(host, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push(child);
    }

    /// Runs `lectern serve` on `host` as a test server.
    fn lectern(&self, host: &str, ip: &str, args: &[&str], env: &[(&str, &str)]) -> TestApp {
        let data = tempfile::tempdir().unwrap();
        let mut c = self.cmd(host, env!("CARGO_BIN_EXE_lectern"));
        c.arg("serve").args(args);
        for (k, v) in fleet_env(data.path()) {
            c.env(k, v);
        }
        c.env("LECTERN_LISTEN", format!("{ip}:8080"));
        for (k, v) in env {
            c.env(k, v);
        }
        TestApp::from_command(c, data)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the helpers said, for the failure report.
            for e in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- {}:", p.display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for h in &self.hosts {
            let ns = self.ns(h);
            // Anything still running in the namespace (a stray encoder) goes with it.
            if let Ok(o) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn fleet_env(data: &Path) -> Vec<(String, String)> {
    [
        ("LECTERN_DATA_DIR", data.display().to_string()),
        (
            "LECTERN_DATABASE_URL",
            format!("postgres://postgres@{DB}:5432/postgres"),
        ),
        ("LECTERN_STORAGE", format!("s3://{BUCKET}")),
        ("LECTERN_S3_ENDPOINT", format!("http://{S3}:5000")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("LECTERN_REDIS_URL", format!("redis://{DB}:6379")),
        ("LECTERN_SECRET", SECRET.into()),
        ("LECTERN_PUBLIC_URL", format!("http://{LB}:8080")),
        ("LECTERN_TRUSTED_PROXIES", format!("{LB}/32")),
        ("LECTERN_RATE_LIMIT_USER_RPS", "0".into()),
        // Three encoders share this machine's cores.
        ("LECTERN_ENCODER_THREADS", "1".into()),
        ("LECTERN_LOG", "warn,lectern_transcoder=info".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn wait_port(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(300))
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{what} does not answer on {addr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pg_bin() -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries")
        .map(|e| e.unwrap().path().join("bin"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

/// The load balancer and CDN: round-robin over the web nodes, no upstream keep-alive (so a
/// request's connection shows which node serves it), segments cached by path, playlists by
/// full signed URL, uploads streamed unbuffered.
fn nginx_conf(dir: &Path) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        r#"user root root;
worker_processes 1;
daemon off;
error_log {d}/nginx-error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  log_format up '$request_method $uri $status $upstream_addr';
  access_log {d}/access.log up;
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
  proxy_cache_path {d}/cache levels=1:2 keys_zone=edge:10m max_size=1g inactive=60m use_temp_path=off;
  upstream web {{
    server {NET}.21:8080 max_fails=1 fail_timeout=5s;
    server {NET}.22:8080 max_fails=1 fail_timeout=5s;
    server {NET}.23:8080 max_fails=1 fail_timeout=5s;
  }}
  proxy_connect_timeout 2s;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  server {{
    listen {LB}:8080;
    client_max_body_size 0;
    location /files/ {{
      proxy_pass http://web;
      proxy_request_buffering off;
      proxy_http_version 1.1;
      proxy_send_timeout 5s;
      proxy_read_timeout 30s;
    }}
    location ~ \.(m4s|mp4|vtt|jpg)$ {{
      proxy_pass http://web;
      proxy_cache edge;
      proxy_cache_key $scheme$proxy_host$uri;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    location /v/ {{
      proxy_pass http://web;
      proxy_cache edge;
      proxy_cache_key $scheme$proxy_host$request_uri;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    location / {{
      proxy_pass http://web;
    }}
  }}
}}
"#
    );
    let p = dir.join("nginx.conf");
    std::fs::write(&p, conf).unwrap();
    p
}

/// What the rendered KEDA ScaledObject asks PostgreSQL.
fn keda_query() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var("LECTERN_TEST_DEPLOY_PYTHON").unwrap_or_else(|_| {
        root.join("target/deployenv/bin/python")
            .display()
            .to_string()
    });
    let o = Command::new(python)
        .arg(root.join("deploy/validate.py"))
        .arg("--print-keda-query")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

async fn keda_count(query: &str) -> i64 {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&format!("postgres://postgres@{DB}:5432/postgres"))
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_one(&mut c)
        .await
        .unwrap();
    n
}

/// The web node whose port 8080 has an established connection (from nginx, which keeps none
/// idle): the one serving the request in flight.
fn serving_node(net: &Net) -> Option<String> {
    ["web1", "web2", "web3"].iter().find_map(|h| {
        let o = net
            .cmd(h, "ss")
            .args(["-Htn", "state", "established", "( sport = :8080 )"])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&o.stdout).trim().is_empty()).then(|| h.to_string())
    })
}

fn sha(b: &[u8]) -> String {
    use sha1::Digest;
    format!("{:x}", sha1::Sha1::digest(b))
}

/// Attempt prefixes (`videos/{id}/{token}/`) that hold objects in the bucket.
async fn prefixes(http: &reqwest::Client, id: &str) -> BTreeSet<String> {
    let body = http
        .get(format!(
            "http://{S3}:5000/{BUCKET}?list-type=2&prefix=videos/{id}/"
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split('/').nth(2).map(String::from))
        .collect()
}

async fn jobs(lb: &TestApp, token: &str, state: &str) -> Vec<Value> {
    let r: Value = lb
        .http
        .get(format!(
            "{}/api/v1/admin/jobs?state={state}&limit=100",
            lb.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["jobs"].as_array().cloned().unwrap_or_default()
}

/// The host part of a worker name (`wk2/1234` → `wk2`).
fn host_of(worker: &Value) -> String {
    worker
        .as_str()
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Waits until every id is processing with progress, and returns id → worker host.
async fn running_on(lb: &TestApp, token: &str, ids: &[String]) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut on = HashMap::new();
        for j in jobs(lb, token, "processing").await {
            let id = j["id"].as_str().unwrap().to_string();
            if ids.contains(&id) && j["progress"].as_f64().unwrap_or(0.0) > 0.0 {
                on.insert(id, host_of(&j["worker"]));
            }
        }
        if on.len() == ids.len() {
            return on;
        }
        assert!(
            Instant::now() < deadline,
            "not all of {ids:?} started: {on:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_separate_hosts() {
    if !common::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let t_start = Instant::now();
    let mut net = Net::new();
    net.host("db", DB);
    net.host("s3", S3);
    net.host("lb", LB);
    for i in 1..=3 {
        net.host(&format!("web{i}"), &format!("{NET}.2{i}"));
        net.host(&format!("wk{i}"), &format!("{NET}.3{i}"));
    }

    // PostgreSQL and Redis on the database host.
    let pgdata = net.dir.path().join("pg");
    std::fs::create_dir_all(&pgdata).unwrap();
    sh(&["chown", "-R", "postgres:postgres", pgdata.to_str().unwrap()]);
    sh(&["chmod", "755", net.dir.path().to_str().unwrap()]);
    let bin = pg_bin();
    let initdb = Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(
        initdb.status.success(),
        "{}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(pgdata.join("pg_hba.conf"))
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(f, "host all all {NET}.0/24 trust")
        })
        .unwrap();
    let pg = bin.join("postgres");
    let (pgdata_s, pg_s) = (pgdata.display().to_string(), pg.display().to_string());
    net.spawn(
        "db",
        "setpriv",
        &[
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            &pg_s,
            "-D",
            &pgdata_s,
            "-c",
            &format!("listen_addresses={DB}"),
            "-c",
            &format!("unix_socket_directories={pgdata_s}"),
            "-c",
            "fsync=off",
            "-c",
            "max_connections=100",
        ],
    );
    net.spawn(
        "db",
        "redis-server",
        &[
            "--bind",
            DB,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            // Protected mode refuses clients from any address but loopback.
            "--protected-mode",
            "no",
        ],
    );
    let python =
        std::env::var("LECTERN_TEST_PYTHON").expect("scripts/test.sh sets LECTERN_TEST_PYTHON");
    let moto = Path::new(&python).with_file_name("moto_server");
    net.spawn("s3", moto.to_str().unwrap(), &["-H", S3, "-p", "5000"]);
    wait_port(&format!("{DB}:5432"), "PostgreSQL");
    wait_port(&format!("{DB}:6379"), "Redis");
    wait_port(&format!("{S3}:5000"), "the S3 server");

    eprintln!("[{:?}] The migrate Job, then pods", t_start.elapsed());
    // The migrate Job, then pods without DDL rights.
    let data = tempfile::tempdir().unwrap();
    let mut migrate = net.cmd("web1", env!("CARGO_BIN_EXE_lectern"));
    migrate.arg("migrate");
    for (k, v) in fleet_env(data.path()) {
        migrate.env(k, v);
    }
    let out = migrate.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let webs: Vec<TestApp> = (1..=3)
        .map(|i| {
            net.lectern(
                &format!("web{i}"),
                &format!("{NET}.2{i}"),
                &["--no-migrate", "--roles", "api,ingest,origin"],
                &[],
            )
        })
        .collect();
    let mut workers: HashMap<String, TestApp> = (1..=3)
        .map(|i| {
            let h = format!("wk{i}");
            let app = net.lectern(
                &h,
                &format!("{NET}.3{i}"),
                &["--no-migrate", "--roles", "worker", "--workers", "1"],
                &[],
            );
            (h, app)
        })
        .collect();
    let conf = nginx_conf(net.dir.path());
    let prefix = net.dir.path().display().to_string();
    net.spawn(
        "lb",
        "nginx",
        &["-c", conf.to_str().unwrap(), "-p", &prefix],
    );
    wait_port(&format!("{LB}:8080"), "nginx");
    let lb = TestApp::client(&format!("http://{LB}:8080"));
    let admin = Keys::from_secret(SECRET).mint("admin-1", "org-fleet", Role::Admin, 3600);
    let operator = Keys::from_secret(SECRET).mint("op-1", "org-fleet", Role::Operator, 3600);
    let query = keda_query();
    assert_eq!(keda_count(&query).await, 0);

    eprintln!("[{:?}] 1. No sticky", t_start.elapsed());
    // 1. No sticky sessions: one upload's requests land on every web node, bytes intact.
    let clip = common::clip("clip-720p.mp4");
    let id = lb.upload(&admin, &clip, 9).await;
    let log = std::fs::read_to_string(net.dir.path().join("access.log")).unwrap();
    let nodes: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("/files/{id}")))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "one upload's requests reach every web node: {nodes:?}"
    );
    let stored = lb
        .download(&format!("{}/files/{id}", lb.base), &admin)
        .await;
    assert_eq!(sha(&stored), sha(&std::fs::read(&clip).unwrap()));
    let first_video = id;

    eprintln!("[{:?}] A web node cut off", t_start.elapsed());
    // A web node cut off in the middle of a PATCH: the upload completes through the others.
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let url = lb
        .create_upload(&admin, big.len() as u64, "filename YmlnLmJpbg==")
        .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(256 << 10).map(|c| Ok(c.to_vec())).collect();
    let slow = futures::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c
    });
    let patch = lb
        .http
        .patch(&url)
        .bearer_auth(&admin)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(slow))
        .timeout(Duration::from_secs(60))
        .send();
    let patch = tokio::spawn(patch);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let victim = serving_node(&net).expect("a web node serves the PATCH");
    net.link(&victim, false);
    let _ = patch.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (s, off) = lb.head(&url, &admin).await;
        let off = off.unwrap_or(0) as usize;
        if s == 200 && off == big.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upload did not complete: HEAD {s} offset {off}"
        );
        if s == 200 {
            let r = lb
                .patch(&url, &admin, off as u64, big[off..].to_vec())
                .await;
            if r.status() != 204 {
                // 423 while the cut node's lease runs out; 5xx from a node being marked down.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let stored = lb.download(&url, &admin).await;
    assert_eq!(
        sha(&stored),
        sha(&big),
        "bytes stored through the surviving nodes are intact"
    );
    net.link(&victim, true);

    eprintln!("[{:?}] 2. Jobs spread", t_start.elapsed());
    // 2. Jobs spread over the workers; the KEDA query counts queued and running work.
    let (st, _) = lb.wait_done(&admin, &first_video).await;
    assert_eq!(st["state"], "ready", "{st}");
    let big_id = url.rsplit('/').next().unwrap().to_string();
    let (st, _) = lb.wait_done(&admin, &big_id).await;
    assert_eq!(st["state"], "failed", "random bytes are not a video: {st}");
    assert_eq!(keda_count(&query).await, 0, "nothing queued or running");
    for w in workers.values() {
        sh(&["kill", "-STOP", &w.pid().to_string()]);
    }
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(lb.upload(&admin, &clip, 1).await);
    }
    assert_eq!(
        keda_count(&query).await,
        6,
        "six queued videos, six worker pods wanted"
    );
    for w in workers.values() {
        sh(&["kill", "-CONT", &w.pid().to_string()]);
    }
    for id in &ids {
        let (st, _) = lb.wait_done(&admin, id).await;
        assert_eq!(st["state"], "ready", "{st}");
    }
    assert_eq!(keda_count(&query).await, 0, "all finished: scale back in");
    let ran_on: BTreeSet<String> = jobs(&lb, &admin, "ready")
        .await
        .iter()
        .filter(|j| ids.contains(&j["id"].as_str().unwrap().to_string()))
        .map(|j| host_of(&j["worker"]))
        .collect();
    assert_eq!(
        ran_on.len(),
        3,
        "jobs spread over all three workers: {ran_on:?}"
    );

    eprintln!("[{:?}] 3. Failover", t_start.elapsed());
    // 3. Failover: kill -9 one worker and cut another, each in the middle of its own job.
    let src = common::long_clip(net.dir.path(), "four.mp4", 4, "1280x720");
    let pair = vec![
        lb.upload(&admin, &src, 1).await,
        lb.upload(&admin, &src, 1).await,
    ];
    let on = running_on(&lb, &admin, &pair).await;
    let (killed, cut) = (on[&pair[0]].clone(), on[&pair[1]].clone());
    assert_ne!(killed, cut, "two jobs run on two workers: {on:?}");
    let survivor = ["wk1", "wk2", "wk3"]
        .iter()
        .find(|h| **h != killed && **h != cut)
        .unwrap()
        .to_string();
    let t0 = Instant::now();
    workers.get_mut(&killed).unwrap().kill9();
    net.link(&cut, false);
    for id in &pair {
        let (st, _) = lb.wait_done(&admin, id).await;
        assert_eq!(st["state"], "ready", "{st}");
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "both jobs finished elsewhere in {took:?}"
    );
    for j in jobs(&lb, &admin, "ready").await {
        if pair.contains(&j["id"].as_str().unwrap().to_string()) {
            assert_eq!(host_of(&j["worker"]), survivor, "{j}");
        }
    }
    let published: Vec<String> = {
        let mut v = Vec::new();
        for id in &pair {
            v.push(
                prefixes(&lb.http, id)
                    .await
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        v
    };
    // The cut worker comes back: its stale attempt publishes nothing and cleans up after itself.
    net.link(&cut, true);
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &pair {
        loop {
            let p = prefixes(&lb.http, id).await;
            let st = lb.status(&admin, id).await;
            assert_eq!(
                st["state"], "ready",
                "the stale attempt changed nothing: {st}"
            );
            if p.len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stale output left behind: {p:?} (published {published:?})"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let pb = lb.playback(&admin, id).await;
        let (s, _, _) = common::fetch(&lb, pb["url"].as_str().unwrap()).await;
        assert_eq!(s, 200);
    }

    eprintln!("[{:?}] 4. CDN", t_start.elapsed());
    // 4. CDN: a second viewer's segments are cache hits; playlists never cross viewers.
    let viewer2 = Keys::from_secret(SECRET).mint("admin-2", "org-fleet", Role::Admin, 3600);
    let url1 = lb.playback(&admin, &pair[0]).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    let url2 = lb.playback(&viewer2, &pair[0]).await["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url1.starts_with(&lb.base) && url1 != url2, "{url1} {url2}");
    let first = walk_tree(&lb.http, &url1).await;
    assert!(first.iter().all(|h| h.status == 200), "{first:#?}");
    let second = walk_tree(&lb.http, &url2).await;
    let mut hits = 0;
    for h in &second {
        assert_eq!(h.status, 200, "{h:?}");
        if is_segment(&h.url) {
            assert_eq!(h.cache, "HIT", "{h:?}");
            hits += 1;
        } else {
            assert_ne!(
                h.cache, "HIT",
                "another viewer's playlist is never served: {h:?}"
            );
        }
    }
    assert!(hits >= 4, "{second:#?}");

    eprintln!("[{:?}] 5. Drain", t_start.elapsed());
    // 5. Drain: SIGTERM mid-job, the job finishes on that worker and nothing is handed back.
    // The survivor is paused, so the job must go to the worker that was cut off: its queue
    // polling recovered when the network came back.
    let paused = workers[&survivor].pid().to_string();
    sh(&["kill", "-STOP", &paused]);
    let id = lb.upload(&admin, &src, 1).await;
    let on = running_on(&lb, &admin, std::slice::from_ref(&id)).await;
    sh(&["kill", "-CONT", &paused]);
    let draining = on[&id].clone();
    assert_eq!(draining, cut, "the reconnected worker takes jobs again");
    let mut w = workers.remove(&draining).unwrap();
    w.send_sigterm();
    let status = w.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "clean exit after the drain: {status}");
    let st = lb.status(&admin, &id).await;
    assert_eq!(
        st["state"], "ready",
        "finished before the worker exited: {st}"
    );
    assert_eq!(st["attempts"], 1, "nothing was handed back: {st}");
    let j = jobs(&lb, &operator, "ready").await;
    let j = j.iter().find(|j| j["id"] == id.as_str()).unwrap();
    assert_eq!(host_of(&j["worker"]), draining, "{j}");
    drop(webs);
}
