//! Quartz cron rules: parsing, validation with messages that say what is wrong, and next fire
//! times in a time zone. Used by the center's Cron actor and by the agent's local cron.
//!
//! The matching itself is `croner`'s. This module adapts Quartz's syntax around it and pins the
//! differences with tests:
//! - 6 or 7 fields, starting with seconds; the 7th is the year;
//! - day-of-week numbers 1–7 are SUN–SAT (Quartz), not Unix 0–6; `0` is refused;
//! - a bare `L` in day-of-week is 7 (SAT), `6L` is the last Friday, `6#3` the third Friday;
//! - `?` only in day-of-month or day-of-week, as the whole field, and not in both;
//! - with both day fields set (no `?`), a day matches when either does (SPEC §11, as Unix
//!   cron does; Quartz itself refuses such rules);
//! - steps like `0/15` (Quartz) and `*/15` are both accepted;
//! - names (JAN–DEC, SUN–SAT) only in their own fields; no `@daily` nicknames, no `L-3`.
//!
//! It knows nothing of tasks, agents or storage.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use std::fmt;

/// Why a rule was refused; the message names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad cron rule {rule:?}: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

/// A parsed Quartz rule.
#[derive(Clone)]
pub struct QuartzRule {
    text: String,
    cron: Cron,
}

impl fmt::Debug for QuartzRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("QuartzRule").field(&self.text).finish()
    }
}

impl PartialEq for QuartzRule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

const FIELD_NAMES: [&str; 7] = [
    "seconds",
    "minutes",
    "hours",
    "day-of-month",
    "month",
    "day-of-week",
    "year",
];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl QuartzRule {
    /// Parses a Quartz rule such as `0 0/5 * ? * MON-FRI`.
    pub fn parse(text: &str) -> Result<QuartzRule, RuleError> {
        let bad = |reason: String| RuleError {
            rule: text.to_string(),
            reason,
        };
        let upper = text.trim().to_ascii_uppercase();
        let fields: Vec<&str> = upper.split_whitespace().collect();
        if !(6..=7).contains(&fields.len()) {
            return Err(bad(format!(
                "a rule has 6 or 7 fields (seconds minutes hours day-of-month month \
                 day-of-week [year]), got {}",
                fields.len()
            )));
        }
        let mut translated = Vec::with_capacity(fields.len());
        for (index, field) in fields.iter().enumerate() {
            let name = FIELD_NAMES[index];
            translated
                .push(translate_field(index, field).map_err(|why| bad(format!("{name}: {why}")))?);
        }
        if fields[3] == "?" && fields[5] == "?" {
            return Err(bad(
                "day-of-month and day-of-week cannot both be `?`".to_string()
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Optional)
            .alternative_weekdays(true)
            .sloppy_ranges(true)
            .build();
        let cron = parser
            .parse(&translated.join(" "))
            .map_err(|err| bad(err.to_string()))?;
        Ok(QuartzRule {
            text: text.trim().to_string(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first firing strictly after `after`, in `zone`; `None` when there is none (a year
    /// field in the past, a date that never exists).
    pub fn next_after<Z: TimeZone>(&self, after: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The first firing strictly after `after_ms` (unix ms), with the rule read in `zone`.
    /// Firings fall on whole seconds.
    pub fn next_after_ms(&self, after_ms: u64, zone: Tz) -> Option<u64> {
        let after = Utc
            .timestamp_millis_opt(i64::try_from(after_ms).ok()?)
            .single()?
            .with_timezone(&zone);
        let next = self.next_after(&after)?;
        u64::try_from(next.timestamp_millis()).ok()
    }
}

/// Checks one field against Quartz's rules and rewrites it for croner: names become numbers,
/// a bare `L` in day-of-week becomes 7 (Saturday).
fn translate_field(index: usize, field: &str) -> Result<String, String> {
    if field.contains('@') {
        return Err("nicknames like @daily are not Quartz syntax".to_string());
    }
    if field == "?" {
        return if index == 3 || index == 5 {
            Ok("?".to_string())
        } else {
            Err("`?` is only allowed in day-of-month and day-of-week".to_string())
        };
    }
    if field.contains('?') {
        return Err("`?` must be the whole field".to_string());
    }
    let mut text = field.to_string();
    match index {
        4 => text = replace_names(&text, &MONTHS, 1),
        5 => text = replace_names(&text, &DAYS, 1),
        _ => {}
    }
    let allowed_letters: &[char] = match index {
        3 => &['L', 'W'],
        5 => &['L', '#'],
        _ => &[],
    };
    if let Some(bad) = text.chars().find(|c| {
        !(c.is_ascii_digit() || matches!(c, '*' | ',' | '-' | '/') || allowed_letters.contains(c))
    }) {
        return Err(format!("unexpected {bad:?} in {field:?}"));
    }
    if index == 3 {
        for part in text.split(',') {
            if part.starts_with("L-") || part.contains("L-") {
                return Err(format!(
                    "offsets from the last day ({part:?}) are not supported"
                ));
            }
            if part.contains('W') && part.contains(['-', '/', '*']) {
                return Err(format!("`W` takes a single day, got {part:?}"));
            }
        }
    }
    if index == 5 {
        if text == "L" {
            return Ok("7".to_string());
        }
        for part in text.split(',') {
            let core = part.split(['#', '/']).next().unwrap_or_default();
            for number in core.trim_end_matches('L').split('-') {
                if number == "*" || number.is_empty() {
                    continue;
                }
                match number.parse::<u8>() {
                    Ok(1..=7) => {}
                    _ => {
                        return Err(format!(
                            "day-of-week values are 1-7 (SUN-SAT) or names, got {number:?}"
                        ))
                    }
                }
            }
            if let Some((_, nth)) = part.split_once('#') {
                if !matches!(nth.parse::<u8>(), Ok(1..=5)) {
                    return Err(format!("`#` takes 1 to 5, got {part:?}"));
                }
            }
        }
    }
    Ok(text)
}

/// Replaces the names of `names` (whole or inside ranges and lists) by their number, starting
/// at `first`.
fn replace_names(field: &str, names: &[&str], first: usize) -> String {
    let mut text = field.to_string();
    for (offset, name) in names.iter().enumerate() {
        text = text.replace(name, &(first + offset).to_string());
    }
    text
}

/// A configured time zone name (`UTC`, `Asia/Shanghai`, …).
pub fn parse_time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?} (use an IANA name such as UTC or Europe/Paris)")
    })
}

/// `yyyy-mm-dd hh:mm:ss` in `zone`, the API's time format (SPEC §11).
pub fn format_time(unix_ms: u64, zone: Tz) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map(|time| {
            time.with_timezone(&zone)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.from_utc_datetime(
            &NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, s)
                .unwrap(),
        )
    }

    fn fmt(time: &DateTime<Utc>) -> String {
        time.format("%Y-%m-%d %H:%M:%S %a").to_string()
    }

    /// The next `n` firings after `from`, formatted.
    fn next_n(rule: &str, from: DateTime<Utc>, n: usize) -> Vec<String> {
        let rule = QuartzRule::parse(rule).unwrap_or_else(|err| panic!("{err}"));
        let mut out = Vec::new();
        let mut at = from;
        for _ in 0..n {
            match rule.next_after(&at) {
                Some(next) => {
                    out.push(fmt(&next));
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// Known answers, checked by hand against a calendar (2024 is a leap year; 2024-01-01 is a
    /// Monday).
    #[test]
    fn next_fire_times_known_answers() {
        let start = utc(2024, 1, 1, 0, 0, 0);
        let table: Vec<(&str, DateTime<Utc>, Vec<&str>)> = vec![
            // Every second; steps Quartz style and Unix style.
            (
                "0/1 * * * * ?",
                start,
                vec!["2024-01-01 00:00:01 Mon", "2024-01-01 00:00:02 Mon"],
            ),
            (
                "0/15 * * * * ?",
                start,
                vec!["2024-01-01 00:00:15 Mon", "2024-01-01 00:00:30 Mon"],
            ),
            (
                "5/20 * * * * ?",
                start,
                vec![
                    "2024-01-01 00:00:05 Mon",
                    "2024-01-01 00:00:25 Mon",
                    "2024-01-01 00:00:45 Mon",
                    "2024-01-01 00:01:05 Mon",
                ],
            ),
            (
                "*/30 * * * * ?",
                start,
                vec!["2024-01-01 00:00:30 Mon", "2024-01-01 00:01:00 Mon"],
            ),
            // Ranges and lists.
            (
                "0 0 9-10 * * ?",
                start,
                vec![
                    "2024-01-01 09:00:00 Mon",
                    "2024-01-01 10:00:00 Mon",
                    "2024-01-02 09:00:00 Tue",
                ],
            ),
            (
                "0 15,45 12 * * ?",
                start,
                vec!["2024-01-01 12:15:00 Mon", "2024-01-01 12:45:00 Mon"],
            ),
            // Day names and Quartz day numbers: 2 = MON, 6 = FRI, 1 = SUN, 7 = SAT.
            (
                "0 0 12 ? * MON-FRI",
                utc(2024, 1, 5, 13, 0, 0),
                vec!["2024-01-08 12:00:00 Mon"],
            ),
            (
                "0 0 12 ? * 6",
                start,
                vec!["2024-01-05 12:00:00 Fri", "2024-01-12 12:00:00 Fri"],
            ),
            ("0 0 0 ? * 1", start, vec!["2024-01-07 00:00:00 Sun"]),
            ("0 0 0 ? * 7", start, vec!["2024-01-06 00:00:00 Sat"]),
            (
                "0 0 0 ? * SUN,SAT",
                start,
                vec!["2024-01-06 00:00:00 Sat", "2024-01-07 00:00:00 Sun"],
            ),
            ("0 0 0 ? * sat", start, vec!["2024-01-06 00:00:00 Sat"]),
            // Month names.
            (
                "0 0 0 1 MAR,JUN ?",
                start,
                vec!["2024-03-01 00:00:00 Fri", "2024-06-01 00:00:00 Sat"],
            ),
            (
                "0 0 0 1 jan-feb ?",
                start,
                vec!["2024-02-01 00:00:00 Thu", "2025-01-01 00:00:00 Wed"],
            ),
            // L: last day of the month, Feb 29 in a leap year.
            (
                "0 0 0 L * ?",
                start,
                vec![
                    "2024-01-31 00:00:00 Wed",
                    "2024-02-29 00:00:00 Thu",
                    "2024-03-31 00:00:00 Sun",
                    "2024-04-30 00:00:00 Tue",
                ],
            ),
            (
                "0 0 0 L 2 ?",
                utc(2024, 3, 1, 0, 0, 0),
                vec![
                    "2025-02-28 00:00:00 Fri",
                    "2026-02-28 00:00:00 Sat",
                    "2027-02-28 00:00:00 Sun",
                    "2028-02-29 00:00:00 Tue",
                ],
            ),
            // Feb 29 only exists in leap years.
            (
                "0 0 0 29 2 ?",
                start,
                vec!["2024-02-29 00:00:00 Thu", "2028-02-29 00:00:00 Tue"],
            ),
            // End of month: the 31st skips the short months.
            (
                "0 0 0 31 * ?",
                start,
                vec![
                    "2024-01-31 00:00:00 Wed",
                    "2024-03-31 00:00:00 Sun",
                    "2024-05-31 00:00:00 Fri",
                ],
            ),
            // W: nearest weekday, never leaving the month. 2024-06-15 is a Saturday → Fri 14th;
            // 2024-09-01 is a Sunday → Mon 2nd; 2024-06-01 is a Saturday → Mon 3rd.
            ("0 0 0 15W 6 ?", start, vec!["2024-06-14 00:00:00 Fri"]),
            ("0 0 0 1W 9 ?", start, vec!["2024-09-02 00:00:00 Mon"]),
            ("0 0 0 1W 6 ?", start, vec!["2024-06-03 00:00:00 Mon"]),
            // LW: last weekday of the month. 2024-03-31 is a Sunday → Fri 29th; 2024-08-31 is a
            // Saturday → Fri 30th.
            ("0 0 0 LW 3 ?", start, vec!["2024-03-29 00:00:00 Fri"]),
            ("0 0 0 LW 8 ?", start, vec!["2024-08-30 00:00:00 Fri"]),
            // #: the third Friday, the first Monday; 6L the last Friday; bare L in
            // day-of-week is Saturday.
            (
                "0 0 10 ? * 6#3",
                start,
                vec!["2024-01-19 10:00:00 Fri", "2024-02-16 10:00:00 Fri"],
            ),
            (
                "0 0 10 ? * MON#1",
                start,
                vec!["2024-01-01 10:00:00 Mon", "2024-02-05 10:00:00 Mon"],
            ),
            (
                "0 0 10 ? * 6L",
                start,
                vec!["2024-01-26 10:00:00 Fri", "2024-02-23 10:00:00 Fri"],
            ),
            ("0 0 10 ? * L", start, vec!["2024-01-06 10:00:00 Sat"]),
            // Year field.
            ("0 0 0 1 1 ? 2026", start, vec!["2026-01-01 00:00:00 Thu"]),
            (
                "0 0 0 1 1 ? 2025-2026",
                start,
                vec!["2025-01-01 00:00:00 Wed", "2026-01-01 00:00:00 Thu"],
            ),
            ("0 0 0 1 1 ? 2023", start, vec![]),
            // Both day fields set: either matches (SPEC §11). The 13th, or any Friday.
            (
                "0 0 0 13 * 6",
                start,
                vec![
                    "2024-01-05 00:00:00 Fri",
                    "2024-01-12 00:00:00 Fri",
                    "2024-01-13 00:00:00 Sat",
                    "2024-01-19 00:00:00 Fri",
                ],
            ),
            // A `*` day-of-month with a day-of-week set: the weekday decides.
            ("0 0 0 * * 2", start, vec!["2024-01-08 00:00:00 Mon"]),
        ];
        for (rule, from, expected) in table {
            let got = next_n(rule, from, expected.len().max(1));
            let expected: Vec<String> = expected.into_iter().map(String::from).collect();
            if expected.is_empty() {
                assert!(got.is_empty(), "{rule}: expected no firing, got {got:?}");
            } else {
                assert_eq!(got, expected, "{rule}");
            }
        }
    }

    #[test]
    fn next_after_ms_is_strict_and_respects_the_time_zone() {
        let rule = QuartzRule::parse("0/1 * * * * ?").unwrap();
        let base = utc(2024, 1, 1, 0, 0, 0).timestamp_millis() as u64;
        assert_eq!(rule.next_after_ms(base, Tz::UTC), Some(base + 1_000));
        assert_eq!(rule.next_after_ms(base + 999, Tz::UTC), Some(base + 1_000));
        assert_eq!(
            rule.next_after_ms(base + 1_000, Tz::UTC),
            Some(base + 2_000)
        );
        // Noon in Shanghai (UTC+8) is 04:00 UTC.
        let noon = QuartzRule::parse("0 0 12 * * ?").unwrap();
        let shanghai = parse_time_zone("Asia/Shanghai").unwrap();
        let next = noon.next_after_ms(base, shanghai).unwrap();
        assert_eq!(format_time(next, Tz::UTC), "2024-01-01 04:00:00");
        assert_eq!(format_time(next, shanghai), "2024-01-01 12:00:00");
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let cases = [
            ("* * * * *", "6 or 7 fields"),
            ("0 0 0 1 1 ? 2024 x", "6 or 7 fields"),
            ("@daily", "6 or 7 fields"),
            ("0 0 0 ? * ?", "both be `?`"),
            ("? 0 0 * * ?", "seconds: `?`"),
            ("0 0 0 1? * *", "`?` must be the whole field"),
            ("0 0 0 * * 0", "day-of-week values are 1-7"),
            ("0 0 0 * * 8", "day-of-week values are 1-7"),
            ("0 0 0 ? * 6#6", "`#` takes 1 to 5"),
            ("0 0 0 L-3 * ?", "offsets from the last day"),
            ("0 MON 0 * * ?", "minutes: unexpected"),
            ("0 0 0 ? JAN MARCH", "day-of-week"),
            ("0 0 0 * FOO ?", "month: unexpected"),
            ("60 0 0 * * ?", "60"),
            ("0 0 24 * * ?", "bad cron rule"),
            ("0 0 0 32 * ?", "bad cron rule"),
            ("0 0 0 1-5W * ?", "`W` takes a single day"),
        ];
        for (rule, expected) in cases {
            let err = QuartzRule::parse(rule).expect_err(rule);
            let text = err.to_string();
            assert!(text.contains(expected), "{rule}: {text}");
        }
    }

    #[test]
    fn time_zones_are_checked() {
        assert_eq!(parse_time_zone("UTC").unwrap(), Tz::UTC);
        assert!(parse_time_zone("Mars/Olympus")
            .unwrap_err()
            .contains("Mars/Olympus"));
        assert_eq!(format_time(0, Tz::UTC), "1970-01-01 00:00:00");
    }
}
