//! When automatic snapshots are due. Pure functions of the policy, the
//! time of the last automatic snapshot and the clock, generic over the time
//! zone so tests can pin one; the mount uses the host's local zone.
//!
//! A mount that was down across several due times takes one snapshot when
//! it comes back, not a burst: the next time is computed from the last
//! snapshot, and once it is in the past a single snapshot is due now.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone};

use super::Policy;

/// The time the next automatic snapshot is due (possibly in the past:
/// then it is due now), or None when the policy takes no snapshots.
pub fn next_due<Tz: TimeZone>(
    policy: &Policy,
    last: Option<&DateTime<Tz>>,
    now: &DateTime<Tz>,
) -> Option<DateTime<Tz>> {
    if let Some(secs) = policy.every_secs {
        return Some(match last {
            Some(last) => last.clone() + Duration::seconds(secs as i64),
            None => now.clone(),
        });
    }
    if policy.at.is_empty() {
        return None;
    }
    // With no automatic snapshot yet, the policy starts at its next time.
    time_point_after(policy, last.unwrap_or(now))
}

/// The first time point of the policy strictly after `after`.
pub fn time_point_after<Tz: TimeZone>(
    policy: &Policy,
    after: &DateTime<Tz>,
) -> Option<DateTime<Tz>> {
    let tz = after.timezone();
    let start = after.naive_local().date();
    // Eight days always contain the next allowed weekday.
    for offset in 0..8 {
        let date = start + Duration::days(offset);
        let weekday = date.weekday().num_days_from_monday() as u8;
        if !policy.days.is_empty() && !policy.days.contains(&weekday) {
            continue;
        }
        for &hour in &policy.at {
            if let Some(at) = local_time(&tz, date, hour) {
                if at > *after {
                    return Some(at);
                }
            }
        }
    }
    None
}

/// `hour`:00 on `date` in `tz`. In a DST gap (the hour does not exist) it
/// is the first instant after the gap; when the hour occurs twice, the
/// first occurrence.
fn local_time<Tz: TimeZone>(tz: &Tz, date: NaiveDate, hour: u8) -> Option<DateTime<Tz>> {
    let naive = date.and_time(NaiveTime::from_hms_opt(hour as u32, 0, 0)?);
    // Gaps are at most a few hours: the first whole minute that exists.
    (0..=240).find_map(|minutes| first_instant(tz, naive + Duration::minutes(minutes)))
}

/// The earlier of the instants a local time may name (chrono lists the
/// two of an ambiguous time in offset order, not time order).
fn first_instant<Tz: TimeZone>(tz: &Tz, naive: chrono::NaiveDateTime) -> Option<DateTime<Tz>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(at) => Some(at),
        LocalResult::Ambiguous(a, b) => Some(if a < b { a } else { b }),
        LocalResult::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, Utc};

    fn policy(text: &str) -> Policy {
        let mut p = Policy::default();
        p.apply_text(text).unwrap();
        p
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn hours_across_the_day_boundary() {
        let p = policy("at=2,14");
        let next = |t: &str| time_point_after(&p, &utc(t)).unwrap().to_rfc3339();
        assert_eq!(next("2026-03-10T01:59:59Z"), "2026-03-10T02:00:00+00:00");
        assert_eq!(next("2026-03-10T02:00:00Z"), "2026-03-10T14:00:00+00:00");
        assert_eq!(next("2026-03-10T23:30:00Z"), "2026-03-11T02:00:00+00:00");
    }

    #[test]
    fn weekdays_only() {
        // 2026-03-13 is a Friday.
        let p = policy("at=6 days=mon,wed");
        let next = |t: &str| time_point_after(&p, &utc(t)).unwrap().to_rfc3339();
        assert_eq!(next("2026-03-13T12:00:00Z"), "2026-03-16T06:00:00+00:00");
        assert_eq!(next("2026-03-16T06:00:00Z"), "2026-03-18T06:00:00+00:00");
    }

    #[test]
    fn local_offset_is_respected() {
        let tz = FixedOffset::east_opt(2 * 3600).unwrap();
        let p = policy("at=0");
        let after = tz.with_ymd_and_hms(2026, 3, 10, 23, 0, 0).unwrap();
        let next = time_point_after(&p, &after).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-03-11T00:00:00+02:00");
    }

    #[test]
    fn a_long_outage_gives_one_snapshot_not_a_burst() {
        let p = policy("at=1,2,3,4");
        let last = utc("2026-03-01T04:00:00Z");
        let now = utc("2026-03-05T12:00:00Z");
        let due = next_due(&p, Some(&last), &now).unwrap();
        assert!(due <= now, "one snapshot is due now");
        // Having taken it now, the next is the next time point, not the
        // ones missed.
        let after = next_due(&p, Some(&now), &now).unwrap();
        assert_eq!(after.to_rfc3339(), "2026-03-06T01:00:00+00:00");
    }

    #[test]
    fn intervals() {
        let p = policy("every=15m");
        let now = utc("2026-03-10T10:00:00Z");
        assert_eq!(next_due(&p, None, &now), Some(now));
        let last = utc("2026-03-10T09:50:00Z");
        assert_eq!(
            next_due(&p, Some(&last), &now).unwrap().to_rfc3339(),
            "2026-03-10T10:05:00+00:00"
        );
        assert_eq!(next_due(&Policy::default(), None, &now), None);
    }
}
