//! Misfire planning: when a cron is (re)loaded, the firings between its `schedule_from` (the
//! last settled instant) and now were missed (no center ran). If the newest of them is less
//! than `misfire_threshold_s` old it runs once, at once; the others are skipped.

use chrono_tz::Tz;
use elves_shared::quartz::QuartzRule;

/// What to do with the firings a cron missed before `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MisfirePlan {
    /// The missed firing that runs once, now.
    pub run_once: Option<u64>,
    /// How many missed firings are skipped (counted up to a bound).
    pub skipped: u64,
    /// True when the count stopped at its bound.
    pub skipped_more: bool,
    /// The first firing after `now`.
    pub next: Option<u64>,
}

impl MisfirePlan {
    pub(super) fn skipped_text(&self) -> String {
        if self.skipped_more {
            format!("more than {}", self.skipped)
        } else {
            self.skipped.to_string()
        }
    }
}

/// Missed firings counted one by one at most; beyond, the count says "more than".
const MISFIRE_COUNT_LIMIT: u64 = 10_000;

/// Decides about the firings after `schedule_from` and up to `now`: the newest runs once if
/// it is less than `threshold_ms` old, all others are skipped.
pub fn plan_misfires(
    rule: &QuartzRule,
    zone: Tz,
    schedule_from: u64,
    now: u64,
    threshold_ms: u64,
) -> MisfirePlan {
    let mut plan = MisfirePlan {
        run_once: None,
        skipped: 0,
        skipped_more: false,
        next: None,
    };
    let mut cursor = schedule_from;
    let mut newest_missed = None;
    loop {
        match rule.next_after_ms(cursor, zone) {
            Some(fire_time) if fire_time <= now => {
                if newest_missed.is_some() {
                    plan.skipped += 1;
                }
                newest_missed = Some(fire_time);
                cursor = fire_time;
                if plan.skipped >= MISFIRE_COUNT_LIMIT {
                    // Jump close to now rather than walk years of every-second firings.
                    plan.skipped_more = true;
                    let jump = now.saturating_sub(threshold_ms.saturating_add(1));
                    if jump > cursor {
                        cursor = jump;
                        newest_missed = None;
                        plan.skipped += 1;
                    }
                }
            }
            Some(fire_time) => {
                plan.next = Some(fire_time);
                break;
            }
            None => break,
        }
    }
    if let Some(missed) = newest_missed {
        if now.saturating_sub(missed) < threshold_ms {
            plan.run_once = Some(missed);
        } else {
            plan.skipped += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000;
    /// 2024-01-01 00:00:00 UTC.
    const T0: u64 = 1_704_067_200_000;

    fn every_second() -> QuartzRule {
        QuartzRule::parse("0/1 * * * * ?").unwrap()
    }

    fn hourly() -> QuartzRule {
        QuartzRule::parse("0 0 * * * ?").unwrap()
    }

    #[test]
    fn nothing_missed_means_the_next_firing() {
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, T0 + 500, 60 * SECOND);
        assert_eq!(
            plan,
            MisfirePlan {
                run_once: None,
                skipped: 0,
                skipped_more: false,
                next: Some(T0 + SECOND),
            }
        );
    }

    #[test]
    fn a_firing_at_schedule_from_is_settled_not_missed() {
        // Settled exactly at the 01:00 firing; now 01:30: nothing missed.
        let settled = T0 + 3_600 * SECOND;
        let plan = plan_misfires(&hourly(), Tz::UTC, settled, settled + 1_800 * SECOND, 0);
        assert_eq!(plan.run_once, None);
        assert_eq!(plan.skipped, 0);
        assert_eq!(plan.next, Some(T0 + 2 * 3_600 * SECOND));
    }

    #[test]
    fn the_newest_missed_firing_within_the_threshold_runs_once() {
        // Down for 5.5 s: firings at +1 … +5 were missed; +5 runs, four are skipped.
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, T0 + 5_500, 60 * SECOND);
        assert_eq!(plan.run_once, Some(T0 + 5 * SECOND));
        assert_eq!(plan.skipped, 4);
        assert_eq!(plan.next, Some(T0 + 6 * SECOND));
    }

    #[test]
    fn a_missed_firing_older_than_the_threshold_is_skipped() {
        // Last settled at 00:00; now 01:02: the 01:00 firing is 2 minutes old.
        let now = T0 + 62 * 60 * SECOND;
        let plan = plan_misfires(&hourly(), Tz::UTC, T0, now, 60 * SECOND);
        assert_eq!(plan.run_once, None);
        assert_eq!(plan.skipped, 1);
        assert_eq!(plan.next, Some(T0 + 2 * 3_600 * SECOND));
        // With a 5-minute threshold it runs.
        let plan = plan_misfires(&hourly(), Tz::UTC, T0, now, 300 * SECOND);
        assert_eq!(plan.run_once, Some(T0 + 3_600 * SECOND));
        assert_eq!(plan.skipped, 0);
    }

    #[test]
    fn a_missed_firing_exactly_the_threshold_old_is_skipped() {
        let fire_time = T0 + 3_600 * SECOND;
        let plan = plan_misfires(&hourly(), Tz::UTC, T0, fire_time + 60 * SECOND, 60 * SECOND);
        assert_eq!(plan.run_once, None);
        assert_eq!(plan.skipped, 1);
        let plan = plan_misfires(&hourly(), Tz::UTC, T0, fire_time + 59_999, 60 * SECOND);
        assert_eq!(plan.run_once, Some(fire_time));
        assert_eq!(plan.skipped, 0);
    }

    #[test]
    fn a_zero_threshold_skips_every_missed_firing() {
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, T0 + 3_000, 0);
        assert_eq!(plan.run_once, None);
        assert_eq!(plan.skipped, 3);
        assert_eq!(plan.next, Some(T0 + 4 * SECOND));
    }

    #[test]
    fn a_rule_with_no_firing_left_has_no_next() {
        // Once, on 2024-01-01 00:00:10; loaded at 00:01 with a 5-minute threshold.
        let once = QuartzRule::parse("10 0 0 1 1 ? 2024").unwrap();
        let plan = plan_misfires(&once, Tz::UTC, T0, T0 + 60 * SECOND, 300 * SECOND);
        assert_eq!(plan.run_once, Some(T0 + 10 * SECOND));
        assert_eq!(plan.skipped, 0);
        assert_eq!(plan.next, None);
    }

    #[test]
    fn years_of_missed_firings_are_not_walked_one_by_one() {
        let now = T0 + 365 * 86_400 * SECOND;
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, now, 10 * SECOND);
        assert!(plan.skipped_more);
        assert_eq!(plan.run_once, Some(now));
        assert_eq!(plan.next, Some(now + SECOND));
        assert!(plan.skipped_text().starts_with("more than "));
    }

    #[test]
    fn the_skipped_count_is_written_plainly_below_its_bound() {
        let plan = plan_misfires(&every_second(), Tz::UTC, T0, T0 + 5_500, 60 * SECOND);
        assert_eq!(plan.skipped_text(), "4");
    }
}
