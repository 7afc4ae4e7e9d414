//! `personalize`: deterministic A/B variants and staged feature rollouts,
//! applied to responses after the cache, so one cached generic page serves
//! every user.
//!
//! # Who the user is
//!
//! The user id the route derived (`client.user-id`); failing that, the
//! cookie named by `user_cookie` (default `uid`) or the header named by
//! `user_header`. Without one the request is anonymous: every experiment
//! shows its first variant, every flag is off, and the response stays
//! shareable.
//!
//! # Config
//!
//! | key | meaning |
//! |---|---|
//! | `experiment.NAME` | variants, as a JSON array or comma list: `["control", "bold"]`, weighted `["control:90", "bold:10"]` |
//! | `flag.NAME` | the rollout stage: `0.1%`, `1%`, `10%`, `100%`, `off`, `on` |
//! | `primary` | the experiment `{{user.variant}}` stands for (default: the first by name) |
//! | `header` | the response header listing the assignments (default `x-personalization`) |
//! | `user_cookie`, `user_header` | where else to find the user id |
//! | `content_types` | media types personalised (default `["text/html"]`); other responses — stylesheets, scripts, images — pass untouched and stay shareable |
//!
//! Assignment is `blake3(NAME ‖ user) mod 10000` (see
//! `cathedral_sdk::rollout`): the same on every request and edge, and a
//! user in a rollout stage stays in every later stage.
//!
//! # What it does to a response
//!
//! * Sets the assignments header: `variant.hero=bold; flag.new-nav=on`.
//! * In an HTML body (when the route hands bodies to filters), replaces
//!   `{{user.variant}}`, `{{variant.NAME}}`, `{{flag.NAME}}` (`on`/`off`)
//!   and `{{user.flags}}` (the enabled flags, space-separated); other
//!   placeholders are left alone.
//! * For a known user, marks the response private to downstream caches:
//!   `public` and `s-maxage` are dropped from `cache-control` and `private`
//!   added.

use cathedral_sdk::rollout::{self, Variant};
use cathedral_sdk::{
    Client, Filter, RequestHead, Response, ResponseAction, ResponseEdit, fields, settings,
};

struct Personalize;

/// One experiment and its variants.
struct Experiment {
    name: String,
    variants: Vec<Variant>,
}

/// One flag and its stage, in basis points.
struct Flag {
    name: String,
    threshold: u32,
}

/// What this user gets.
struct Assignment {
    variants: Vec<(String, String)>,
    flags: Vec<(String, bool)>,
}

fn experiments() -> Vec<Experiment> {
    settings::under("experiment")
        .into_iter()
        .map(|(name, value)| Experiment {
            variants: rollout::parse_variants(&settings::parse_list(&value)),
            name,
        })
        .filter(|e| !e.variants.is_empty())
        .collect()
}

fn flags() -> Vec<Flag> {
    settings::under("flag")
        .into_iter()
        .map(|(name, stage)| {
            let threshold = rollout::parse_stage(&stage);
            if threshold.is_none() {
                cathedral_sdk::log::warn(&format!(
                    "flag {name}: invalid stage {stage:?}, treated as off"
                ));
            }
            Flag {
                name,
                threshold: threshold.unwrap_or(0),
            }
        })
        .collect()
}

fn user(request: &RequestHead, client: &Client) -> Option<String> {
    if let Some(id) = client.user_id.as_ref().filter(|id| !id.is_empty()) {
        return Some(id.clone());
    }
    let cookie = settings::string_or("user_cookie", "uid");
    if let Some(id) = request.cookie(&cookie).filter(|id| !id.is_empty()) {
        return Some(id.to_owned());
    }
    let header = settings::string("user_header")?;
    request
        .header(&header)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

fn assign(user: Option<&str>) -> Assignment {
    let variants = experiments()
        .into_iter()
        .map(|e| {
            let chosen = match user {
                Some(user) => rollout::variant(&e.name, user, &e.variants),
                None => e.variants.first(),
            };
            let chosen = chosen.map_or_else(String::new, |v| v.name.clone());
            (e.name, chosen)
        })
        .collect();
    let flags = flags()
        .into_iter()
        .map(|f| {
            let on = user.is_some_and(|user| rollout::enabled(&f.name, user, f.threshold));
            (f.name, on)
        })
        .collect();
    Assignment { variants, flags }
}

impl Assignment {
    fn header(&self) -> String {
        let variants = self
            .variants
            .iter()
            .map(|(e, v)| format!("variant.{e}={v}"));
        let flags = self
            .flags
            .iter()
            .map(|(f, on)| format!("flag.{f}={}", if *on { "on" } else { "off" }));
        variants.chain(flags).collect::<Vec<_>>().join("; ")
    }

    fn primary(&self) -> Option<&str> {
        let primary = settings::string("primary");
        let found = match &primary {
            Some(name) => self.variants.iter().find(|(e, _)| e == name),
            None => self.variants.first(),
        };
        found.map(|(_, v)| v.as_str())
    }

    /// `html` with the known placeholders replaced.
    fn render(&self, html: &str) -> String {
        let mut out = html.replace("{{user.variant}}", self.primary().unwrap_or_default());
        let enabled: Vec<&str> = self
            .flags
            .iter()
            .filter(|(_, on)| *on)
            .map(|(f, _)| f.as_str())
            .collect();
        out = out.replace("{{user.flags}}", &enabled.join(" "));
        for (experiment, variant) in &self.variants {
            out = out.replace(&format!("{{{{variant.{experiment}}}}}"), variant);
        }
        for (flag, on) in &self.flags {
            out = out.replace(
                &format!("{{{{flag.{flag}}}}}"),
                if *on { "on" } else { "off" },
            );
        }
        out
    }
}

/// Whether the response's media type is one this module personalises.
fn personalised(response: &Response) -> bool {
    let Some(media) = response.media_type() else {
        return false;
    };
    let mut types = settings::list("content_types");
    if types.is_empty() {
        types.push(String::from("text/html"));
    }
    types.iter().any(|t| t.eq_ignore_ascii_case(&media))
}

/// `cache-control` made private: `public` and `s-maxage` dropped.
fn private_cache_control(current: Option<&str>) -> String {
    let kept: Vec<&str> = current
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter(|d| {
            let name = d
                .split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            !matches!(name.as_str(), "public" | "s-maxage" | "private")
        })
        .collect();
    std::iter::once("private")
        .chain(kept)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Filter for Personalize {
    fn on_response(request: RequestHead, client: Client, response: Response) -> ResponseAction {
        let mut edit = ResponseEdit::new();
        if !personalised(&response) {
            return edit.into_action();
        }
        let user = user(&request, &client);
        let assignment = assign(user.as_deref());
        if assignment.variants.is_empty() && assignment.flags.is_empty() {
            return edit.into_action();
        }
        let header = settings::string_or("header", "x-personalization");
        edit.set_headers
            .push(fields::field(&header, assignment.header()));
        if user.is_some() {
            let cc = private_cache_control(response.header("cache-control"));
            edit.set_headers.push(fields::field("cache-control", cc));
        }
        let html = response.media_type().as_deref() == Some("text/html");
        if html
            && let Some(text) = response
                .body
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
            && text.contains("{{")
        {
            let rendered = assignment.render(text);
            if rendered != text {
                edit.body = Some(rendered.into_bytes());
            }
        }
        edit.into_action()
    }
}

cathedral_sdk::export_filter!(Personalize);
