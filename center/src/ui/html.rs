//! Small HTML helpers: escaping, the page frame, status badges, times, pagers. Pages are
//! written as plain strings through these; everything that comes from a user, an agent or the
//! database goes through [`esc`].

use chrono_tz::Tz;
use std::fmt::Write as _;

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A query-string value.
pub fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A unix-ms instant in the center's zone, the zone's abbreviation shown.
pub fn time(unix_ms: u64, zone: Tz) -> String {
    let Ok(ms) = i64::try_from(unix_ms) else {
        return "-".to_string();
    };
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(at) => at
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        None => "-".to_string(),
    }
}

pub fn opt_time(unix_ms: Option<u64>, zone: Tz) -> String {
    unix_ms.map_or_else(|| "-".to_string(), |ms| time(ms, zone))
}

/// "12 s ago", "3 min ago": how long before `now` `then` was.
pub fn ago(then: u64, now: u64) -> String {
    let seconds = now.saturating_sub(then) / 1000;
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        7200..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// The tone of a badge: colour plus the word, never the colour alone.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Ok,
    Bad,
    Warn,
    Idle,
}

pub fn badge(tone: Tone, text: &str) -> String {
    let class = match tone {
        Tone::Ok => "ok",
        Tone::Bad => "bad",
        Tone::Warn => "warn",
        Tone::Idle => "idle",
    };
    let mark = match tone {
        Tone::Ok => "✓ ",
        Tone::Bad => "✗ ",
        Tone::Warn => "… ",
        Tone::Idle => "",
    };
    format!("<span class=\"badge {class}\">{mark}{}</span>", esc(text))
}

/// The pages of the navigation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Agents,
    Tasks,
    Run,
    Queues,
    Batches,
    Crons,
    Apps,
    Admin,
}

impl Section {
    fn href_and_label(self) -> (&'static str, &'static str) {
        match self {
            Section::Overview => ("/ui/", "Overview"),
            Section::Agents => ("/ui/agents", "Agents"),
            Section::Tasks => ("/ui/tasks", "Tasks"),
            Section::Run => ("/ui/run", "Run"),
            Section::Queues => ("/ui/queues", "Queues"),
            Section::Batches => ("/ui/batches", "Batches"),
            Section::Crons => ("/ui/crons", "Crons"),
            Section::Apps => ("/ui/apps", "Apps"),
            Section::Admin => ("/ui/admin", "Admin"),
        }
    }
}

/// Who is looking at a page: what the frame shows of them.
pub struct Viewer<'a> {
    pub auth_id: &'a str,
    pub is_admin: bool,
    pub csrf: &'a str,
    pub zone: Tz,
}

/// A whole page: header with the navigation (Admin only for admins), the signed-in auth id and
/// the sign-out form, then `body`.
pub fn page(title: &str, current: Section, viewer: &Viewer<'_>, body: &str) -> String {
    let mut nav = String::new();
    for section in [
        Section::Overview,
        Section::Agents,
        Section::Tasks,
        Section::Run,
        Section::Queues,
        Section::Batches,
        Section::Crons,
        Section::Apps,
        Section::Admin,
    ] {
        if section == Section::Admin && !viewer.is_admin {
            continue;
        }
        let (href, label) = section.href_and_label();
        let class = if section == current {
            " class=\"current\" aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{class}>{label}</a>");
    }
    let role = if viewer.is_admin { "admin" } else { "user" };
    let header = format!(
        "<header><a class=\"brand\" href=\"/ui/\">elves</a><nav>{nav}</nav>\
         <div class=\"who\"><span id=\"whoami\">{} ({role})</span>\
         <form method=\"post\" action=\"/ui/logout\">{}\
         <button type=\"submit\" id=\"logout\">Sign out</button></form></div></header>",
        esc(viewer.auth_id),
        csrf_field(viewer.csrf),
    );
    let footer = format!(
        "<footer class=\"muted\">Times are in the center's zone, {}.</footer>",
        viewer.zone
    );
    frame(title, &format!("{header}<main>{body}{footer}</main>"))
}

/// The document around any body (the sign-in page has no navigation).
pub fn frame(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · elves</title><link rel=\"stylesheet\" href=\"/ui/style.css\"></head>\
         <body>{body}</body></html>",
        esc(title)
    )
}

pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A notice above a page's content.
pub fn notice(ok: bool, text: &str) -> String {
    let class = if ok { "ok" } else { "bad" };
    format!(
        "<div class=\"notice {class}\" role=\"status\" id=\"notice\">{}</div>",
        esc(text)
    )
}

/// Previous/next links for page `page` (0-based) of a list whose filters are `query`.
pub fn pager(base: &str, query: &str, page: u64, has_more: bool) -> String {
    let mut out = String::from("<div class=\"pager\">");
    let join = if query.is_empty() { "" } else { "&" };
    if page > 0 {
        let _ = write!(
            out,
            "<a class=\"button secondary\" href=\"{base}?{query}{join}page={}\">← Newer</a>",
            page - 1
        );
    }
    let _ = write!(out, "<span>page {}</span>", page + 1);
    if has_more {
        let _ = write!(
            out,
            "<a class=\"button secondary\" id=\"next-page\" href=\"{base}?{query}{join}page={}\">Older →</a>",
            page + 1
        );
    }
    out.push_str("</div>");
    out
}

/// A `<select>` whose options are `(value, label)`, `selected` chosen.
pub fn select(name: &str, options: &[(&str, &str)], selected: &str) -> String {
    let mut out = format!("<select name=\"{name}\" id=\"f-{name}\">");
    for (value, label) in options {
        let chosen = if *value == selected { " selected" } else { "" };
        let _ = write!(
            out,
            "<option value=\"{}\"{chosen}>{}</option>",
            esc(value),
            esc(label)
        );
    }
    out.push_str("</select>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn times_show_their_zone() {
        assert_eq!(time(0, Tz::UTC), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(0, Tz::Europe__Paris), "1970-01-01 01:00:00 CET");
    }

    #[test]
    fn a_badge_says_its_state_in_words() {
        assert!(badge(Tone::Bad, "failed").contains("failed"));
        assert!(badge(Tone::Ok, "<b>").contains("&lt;b&gt;"));
    }
}
