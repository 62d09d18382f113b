//! The web pages a deployment's users open: `/embed/{video_id}` (the learner's player, made for
//! LMS iframes), `/studio` (instructors' uploads and lectures) and `/admin` (the queue and the
//! workers). They are static: the bundle esbuild built from `web/src` is embedded at compile
//! time (`build.rs`), served under `/assets/` with content-hashed names and an immutable
//! `Cache-Control`, and every page talks to the public API with the token its URL fragment
//! carried. No asset comes from a CDN at run time.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use lectern_core::error::{ApiError, Code};

/// The script of one page and the chunks it imports statically.
pub struct PageAssets {
    /// The page's entry module.
    pub script: &'static str,
    /// Chunks the entry imports (preloaded, so they load in parallel).
    pub preload: &'static [&'static str],
}

/// Everything the bundle holds.
pub struct Bundle {
    /// The shared stylesheet.
    pub style: &'static str,
    /// The player page.
    pub embed: PageAssets,
    /// The studio page.
    pub studio: PageAssets,
    /// The admin page.
    pub admin: PageAssets,
    /// Every file by its hashed name.
    pub files: &'static [(&'static str, &'static [u8])],
}

include!(concat!(env!("OUT_DIR"), "/bundle.rs"));

/// How the pages are served in this deployment.
#[derive(Clone, Debug, Default)]
pub struct WebConfig {
    /// CSP `frame-ancestors` sources for the player (the page's own origin is always added).
    pub embed_frame_ancestors: String,
    /// Origins the pages may load media and posters from, besides their own.
    pub media_origins: Vec<String>,
}

impl WebConfig {
    /// The config from `embed_frame_ancestors`, `public_url` and `web_media_origins`; the public
    /// URL's origin is where playback URLs point, so the player must be able to fetch from it.
    pub fn new(frame_ancestors: &str, public_url: Option<&str>, media_origins: &str) -> Self {
        let mut origins: Vec<String> = media_origins
            .split_whitespace()
            .filter_map(origin_of)
            .collect();
        if let Some(o) = public_url.and_then(origin_of) {
            origins.push(o);
        }
        origins.sort();
        origins.dedup();
        let ancestors = frame_ancestors
            .split_whitespace()
            .filter(|s| {
                s.chars()
                    .all(|c| c.is_ascii_graphic() && c != ';' && c != ',')
            })
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            embed_frame_ancestors: ancestors,
            media_origins: origins,
        }
    }

    fn csp(&self, page: Page) -> String {
        let media = self.media_origins.join(" ");
        let frame_ancestors = match page {
            Page::Embed => format!("'self' {}", self.embed_frame_ancestors),
            // Instructors' and admins' pages are never framed: no clickjacking of their buttons.
            _ => "'none'".into(),
        };
        // The studio previews the player (same origin); nothing else is framed.
        let frame_src = if page == Page::Studio {
            "'self'"
        } else {
            "'none'"
        };
        format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: {media}; \
             media-src 'self' blob: {media}; connect-src 'self' {media}; frame-src {frame_src}; \
             frame-ancestors {frame_ancestors}; base-uri 'none'; form-action 'none'; object-src 'none'"
        )
        .replace("  ", " ")
    }
}

/// The origin (`scheme://host[:port]`) of an absolute http(s) URL.
fn origin_of(u: &str) -> Option<String> {
    let u = url::Url::parse(u).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.origin().ascii_serialization())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Page {
    Embed,
    Studio,
    Admin,
}

/// The page routes and `/assets/{file}`; `/` leads to the studio.
pub fn router(cfg: WebConfig) -> Router {
    // A page depends only on the bundle and the config: rendered once, cloned per request.
    let pages = Pages {
        embed: render(&cfg, Page::Embed),
        studio: render(&cfg, Page::Studio),
        admin: render(&cfg, Page::Admin),
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/studio") }))
        .route("/studio", get(studio))
        .route("/admin", get(admin))
        .route("/embed/{id}", get(embed))
        .route("/assets/{file}", get(asset))
        .with_state(std::sync::Arc::new(pages))
}

/// A page's headers and HTML, or `None` without a bundle.
type Rendered = Option<(HeaderMap, axum::body::Bytes)>;

struct Pages {
    embed: Rendered,
    studio: Rendered,
    admin: Rendered,
}

type St = State<std::sync::Arc<Pages>>;

async fn studio(State(p): St) -> Response {
    respond(&p.studio)
}

async fn admin(State(p): St) -> Response {
    respond(&p.admin)
}

async fn embed(State(p): St, Path(id): Path<String>) -> Response {
    // The script reads the id from the path; refusing odd ids here keeps the page honest.
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return ApiError::not_found("video").into_response();
    }
    respond(&p.embed)
}

fn respond(page: &Rendered) -> Response {
    match page {
        Some((h, html)) => (StatusCode::OK, h.clone(), html.clone()).into_response(),
        None => ApiError::new(
            Code::PagesNotBuilt,
            "this binary was built without its web pages: run `npm ci && node build.mjs` in web/, then rebuild",
        )
        .into_response(),
    }
}

fn render(cfg: &WebConfig, which: Page) -> Rendered {
    let b = BUNDLE.as_ref()?;
    let (assets, title, class) = match which {
        Page::Embed => (&b.embed, "Lecture", "embed"),
        Page::Studio => (&b.studio, "Lectern studio", "studio"),
        Page::Admin => (&b.admin, "Lectern admin", "admin"),
    };
    let preload: String = assets
        .preload
        .iter()
        .map(|f| format!("<link rel=\"modulepreload\" href=\"/assets/{f}\">"))
        .collect();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><link rel=\"icon\" href=\"data:,\"><link rel=\"stylesheet\" href=\"/assets/{style}\">{preload}\
         <script type=\"module\" src=\"/assets/{script}\"></script></head>\
         <body class=\"{class}\"><main id=\"app\"><noscript>This page needs JavaScript.</noscript></main></body></html>",
        style = b.style,
        script = assets.script,
    );
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page names the current hashed assets, so it is revalidated on every load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A page's address carries no token (that is in the fragment), but nothing leaks anyway.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&cfg.csp(which)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    if which != Page::Embed {
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    Some((h, html.into()))
}

async fn asset(Path(file): Path<String>) -> Response {
    let found = BUNDLE
        .as_ref()
        .and_then(|b| b.files.iter().find(|(name, _)| *name == file));
    let Some((name, body)) = found else {
        return ApiError::not_found("asset").into_response();
    };
    let mime = match name.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            // The name changes with the content, so a cached copy never goes stale.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_frames_the_player_only_where_configured() {
        let cfg = WebConfig::new(
            "https://lms.example.edu x;script-src",
            Some("https://cdn.example.com/base"),
            "https://media.example.net/x not-a-url",
        );
        let embed = cfg.csp(Page::Embed);
        assert!(
            embed.contains("frame-ancestors 'self' https://lms.example.edu;"),
            "{embed}"
        );
        assert!(
            !embed.contains("script-src *"),
            "a source list cannot inject a directive: {embed}"
        );
        assert!(
            embed.contains("connect-src 'self' https://cdn.example.com https://media.example.net;"),
            "{embed}"
        );
        assert!(embed.contains("script-src 'self';"), "{embed}");
        let studio = cfg.csp(Page::Studio);
        assert!(studio.contains("frame-ancestors 'none'"), "{studio}");
        assert!(studio.contains("frame-src 'self'"), "{studio}");
        assert!(cfg.csp(Page::Admin).contains("frame-src 'none'"));
    }
}
