//! Per-route cache policy: TTL mode, defaults from content classes, key options, cookie handling.

use std::time::Duration;

use crate::key::KeyOptions;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Whose freshness lifetime wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TtlMode {
    /// The origin's explicit freshness wins; the route's default only fills in when it gives none.
    #[default]
    Origin,
    /// The route's default TTL replaces the origin's freshness lifetime (`no-store`, `private`,
    /// `no-cache` and `must-revalidate` are still obeyed).
    Override,
}

/// Content classes with their cache defaults (product brief, "Content classes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentClass {
    /// Images: 12 hours.
    Image,
    /// CSS/JS with a version or content hash in the name: immutable, one year.
    Fingerprinted,
    /// Fonts: 30 days.
    Font,
    /// Video: no default lifetime; ranges are served from whole cached objects that fit.
    Video,
    /// API responses: 5 minutes.
    Api,
    /// Per-user content: 1 minute, and only when the route keys on the user
    /// (`KeyOptions::headers` non-empty); otherwise such responses are not stored.
    PerUser,
    /// WebSockets and event streams: never cached, passed through.
    RealTime,
}

impl ContentClass {
    /// The freshness lifetime the class supplies when the origin gives none.
    pub fn default_ttl(self) -> Option<Duration> {
        match self {
            ContentClass::Image => Some(12 * HOUR),
            ContentClass::Fingerprinted => Some(365 * DAY),
            ContentClass::Font => Some(30 * DAY),
            ContentClass::Api => Some(Duration::from_secs(300)),
            ContentClass::PerUser => Some(Duration::from_secs(60)),
            ContentClass::Video | ContentClass::RealTime => None,
        }
    }

    /// Detects a class from the request path (with or without query) and the response's
    /// `Content-Type`. `PerUser` is never detected: routes declare it.
    pub fn detect(path: &str, content_type: Option<&str>) -> Option<Self> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let essence = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        let ext = file
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        let ext = ext.as_str();

        if essence == "text/event-stream" {
            return Some(ContentClass::RealTime);
        }
        let is_script_or_style = matches!(ext, "css" | "js" | "mjs")
            || matches!(
                essence.as_str(),
                "text/css"
                    | "text/javascript"
                    | "application/javascript"
                    | "application/x-javascript"
            );
        if is_script_or_style {
            return is_fingerprinted(file, query).then_some(ContentClass::Fingerprinted);
        }
        if essence.starts_with("image/")
            || matches!(
                ext,
                "png"
                    | "jpg"
                    | "jpeg"
                    | "gif"
                    | "webp"
                    | "avif"
                    | "svg"
                    | "ico"
                    | "bmp"
                    | "tif"
                    | "tiff"
            )
        {
            return Some(ContentClass::Image);
        }
        if essence.starts_with("font/")
            || matches!(
                essence.as_str(),
                "application/font-woff"
                    | "application/x-font-ttf"
                    | "application/vnd.ms-fontobject"
            )
            || matches!(ext, "woff" | "woff2" | "ttf" | "otf" | "eot")
        {
            return Some(ContentClass::Font);
        }
        if essence.starts_with("video/") || matches!(ext, "mp4" | "webm" | "mov" | "mkv" | "m4v") {
            return Some(ContentClass::Video);
        }
        if essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
            || path == "/api"
            || path.starts_with("/api/")
        {
            return Some(ContentClass::Api);
        }
        None
    }
}

/// Whether a css/js file name carries a version or content hash: a `.`/`-`/`_`-separated
/// segment of the stem that looks like a hash (`app.3f9a1c.js`, `app-3f9a1c2b.css`,
/// `index-BqX3f9aK.js`), or a `v`/`ver`/`version`/`hash` query parameter (`?v=3`).
fn is_fingerprinted(file: &str, query: Option<&str>) -> bool {
    if let Some(q) = query {
        let versioned = q.split('&').any(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            matches!(name, "v" | "ver" | "version" | "hash") && !value.is_empty()
        });
        if versioned {
            return true;
        }
    }
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    stem.split(['.', '-', '_']).skip(1).any(|seg| {
        let digits = seg.bytes().filter(u8::is_ascii_digit).count();
        let alnum = seg.bytes().all(|b| b.is_ascii_alphanumeric());
        let hex = seg.bytes().all(|b| b.is_ascii_hexdigit());
        let letters = seg.len() - digits;
        alnum
            && digits > 0
            && ((hex && seg.len() >= 6) || (seg.len() >= 8 && letters > 0))
            && seg.len() <= 64
    })
}

/// How one route caches. Build with [`RoutePolicy::default`] (CDN defaults with content-class
/// detection) or [`RoutePolicy::pure_rfc`] ("quick mode": RFC 9111 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Whether the origin's freshness or the route's default wins.
    pub mode: TtlMode,
    /// Freshness supplied when the origin gives none (`Origin`), or always (`Override`).
    /// Takes precedence over the class default. Applies only to status codes that are
    /// cacheable by default; other statuses need explicit freshness from the origin.
    pub default_ttl: Option<Duration>,
    /// A fixed content class for the route; `None` = detect per response when
    /// `detect_class` is set.
    pub class: Option<ContentClass>,
    /// Detect the class from path and `Content-Type` when `class` is `None`.
    pub detect_class: bool,
    /// Cache key options.
    pub key: KeyOptions,
    /// Store responses carrying `Set-Cookie` (the stored copy never has it).
    pub store_set_cookie: bool,
    /// Forward `CDN-Cache-Control` to clients (else the caller strips it).
    pub forward_cdn_cache_control: bool,
    /// Upper bound for heuristic freshness (RFC 9111 §4.2.2).
    pub heuristic_cap: Duration,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            mode: TtlMode::Origin,
            default_ttl: None,
            class: None,
            detect_class: true,
            key: KeyOptions::default(),
            store_set_cookie: false,
            forward_cdn_cache_control: true,
            heuristic_cap: DAY,
        }
    }
}

impl RoutePolicy {
    /// Quick mode: no default TTL, no class defaults; heuristics only where the RFC allows.
    pub fn pure_rfc() -> Self {
        Self {
            detect_class: false,
            ..Self::default()
        }
    }

    /// The class that applies to a response on this route.
    pub fn effective_class(&self, path: &str, content_type: Option<&str>) -> Option<ContentClass> {
        self.class.or_else(|| {
            self.detect_class
                .then(|| ContentClass::detect(path, content_type))
                .flatten()
        })
    }

    /// The freshness lifetime the route supplies for a response of `class`.
    pub(crate) fn fallback_ttl(&self, class: Option<ContentClass>) -> Option<Duration> {
        self.default_ttl
            .or_else(|| class.and_then(ContentClass::default_ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, ct: Option<&str>, expected: Option<ContentClass>) {
        assert_eq!(ContentClass::detect(path, ct), expected, "{path} {ct:?}");
    }

    #[test]
    fn class_detection() {
        use ContentClass::*;
        check("/img/logo.PNG", None, Some(Image));
        check("/x", Some("image/webp"), Some(Image));
        check("/static/app.3f9a1c.js", None, Some(Fingerprinted));
        check("/static/app-3f9a1c2b.css", None, Some(Fingerprinted));
        check("/assets/index-BqX3f9aK.js", None, Some(Fingerprinted));
        check("/static/app.js?v=12", None, Some(Fingerprinted));
        check("/static/app.js", None, None);
        check("/static/jquery-3.6.0.min.js", None, None);
        check("/static/app.bundle.js", None, None);
        check("/static/main.js?x=1", Some("text/javascript"), None);
        check("/fonts/inter.woff2", None, Some(Font));
        check("/f", Some("font/ttf"), Some(Font));
        check("/movie.mp4", None, Some(Video));
        check("/api/users", None, Some(Api));
        check("/users", Some("application/json; charset=utf-8"), Some(Api));
        check("/users", Some("application/problem+json"), Some(Api));
        check("/events", Some("text/event-stream"), Some(RealTime));
        check("/index.html", Some("text/html"), None);
        check("", None, None);
    }

    #[test]
    fn class_defaults_and_fallback() {
        let day = 86_400;
        let cases = [
            (ContentClass::Image, Some(12 * 3600)),
            (ContentClass::Fingerprinted, Some(365 * day)),
            (ContentClass::Font, Some(30 * day)),
            (ContentClass::Api, Some(300)),
            (ContentClass::PerUser, Some(60)),
            (ContentClass::RealTime, None),
            (ContentClass::Video, None),
        ];
        for (class, secs) in cases {
            assert_eq!(
                class.default_ttl(),
                secs.map(Duration::from_secs),
                "{class:?}"
            );
        }
        let route = RoutePolicy {
            default_ttl: Some(Duration::from_secs(7)),
            ..RoutePolicy::default()
        };
        assert_eq!(
            route.fallback_ttl(Some(ContentClass::Image)),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            RoutePolicy::pure_rfc().effective_class("/a.png", None),
            None
        );
        assert_eq!(
            RoutePolicy::default().effective_class("/a.png", None),
            Some(ContentClass::Image)
        );
    }
}
