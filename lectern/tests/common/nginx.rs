//! An nginx cache in front of the origin, as a CDN stand-in.

use super::*;

/// nginx with `proxy_cache` in front of an origin, configured the way SECURITY.md tells CDN
/// operators: segments keyed by path alone (one copy for every viewer), playlists by their full
/// URL (the signature is part of the key). `X-Cache-Status` tells HIT from MISS. It also serves
/// the test clients folder at `/player/` (the hls.js page).
pub struct Nginx {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on `port`, proxying to `upstream` (`host:port`).
    pub fn start(port: u16, upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
        let user = if unsafe_is_root() {
            "user root root;"
        } else {
            ""
        };
        let conf = format!(
            r#"{user}
worker_processes 1;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
  types {{ text/html html; application/javascript js mjs; }}
  proxy_cache_path {d}/cache levels=1:2 keys_zone=lectern:10m max_size=1g inactive=60m use_temp_path=off;
  server {{
    listen 127.0.0.1:{port};
    location /player/ {{ alias {clients}/; }}
    # tus uploads stream through unbuffered, whatever their size.
    location /files/ {{
      proxy_pass http://{upstream};
      client_max_body_size 0;
      proxy_request_buffering off;
      proxy_http_version 1.1;
    }}
    # Init and media segments: immutable and viewer-independent, so the key ignores the query.
    location ~ \.(m4s|mp4|vtt|jpg)$ {{
      proxy_pass http://{upstream};
      proxy_cache lectern;
      proxy_cache_key $scheme$proxy_host$uri;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
    # Playlists: signed per viewer, so the full URL (signature included) is the key.
    location / {{
      proxy_pass http://{upstream};
      proxy_cache lectern;
      proxy_cache_key $scheme$proxy_host$request_uri;
      add_header X-Cache-Status $upstream_cache_status always;
    }}
  }}
}}
"#,
            clients = clients.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            // Its log goes to error.log; a stray worker must never hold the test output open.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed by scripts/test.sh");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx did not start ({exited:?}); run `nginx -t -c {conf_path:?}`: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            base,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: a killed master orphans its worker and cache-manager processes,
        // which then hold the suite's output pipe open forever.
        sigterm(&self.child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
