//! Which automatic snapshots a policy keeps. Manual snapshots never reach
//! here; protected ones are always kept. A snapshot is kept if any rule
//! keeps it: younger than `retain-days`, among the last N, or the newest of
//! one of the last N hours, days, weeks or months that have snapshots.
//! A policy with no retention rule keeps everything.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike};

use super::Policy;

#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    pub created_ms: i64,
    pub protected: bool,
}

/// The names of the snapshots to delete, oldest first.
pub fn to_delete<Tz: TimeZone>(
    policy: &Policy,
    snapshots: &[Candidate],
    now: &DateTime<Tz>,
) -> Vec<String> {
    if policy.retain_days.is_none() && !policy.keep.any() {
        return Vec::new();
    }
    let tz = now.timezone();
    let mut newest_first: Vec<&Candidate> = snapshots.iter().collect();
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
    let local = |s: &Candidate| tz.timestamp_millis_opt(s.created_ms).earliest();

    let mut keep: HashSet<&str> = HashSet::new();
    for s in &newest_first {
        if s.protected {
            keep.insert(&s.name);
        }
    }
    if let Some(days) = policy.retain_days {
        let cutoff = now.clone() - Duration::days(days as i64);
        for s in &newest_first {
            if local(s).is_some_and(|t| t > cutoff) {
                keep.insert(&s.name);
            }
        }
    }
    if let Some(n) = policy.keep.last {
        for s in newest_first.iter().take(n as usize) {
            keep.insert(&s.name);
        }
    }
    type Bucket<Tz> = fn(&DateTime<Tz>) -> (i32, u32, u32);
    let buckets: [(Option<u32>, Bucket<Tz>); 4] = [
        (policy.keep.hourly, |t| (t.year(), t.ordinal(), t.hour())),
        (policy.keep.daily, |t| (t.year(), t.ordinal(), 0)),
        (policy.keep.weekly, |t| {
            (t.iso_week().year(), t.iso_week().week(), 0)
        }),
        (policy.keep.monthly, |t| (t.year(), t.month(), 0)),
    ];
    for (count, bucket_of) in buckets {
        let Some(count) = count else { continue };
        let mut seen = HashSet::new();
        for s in &newest_first {
            let Some(t) = local(s) else { continue };
            if seen.len() >= count as usize {
                break;
            }
            // The first (newest) snapshot of each bucket is its keeper.
            if seen.insert(bucket_of(&t)) {
                keep.insert(&s.name);
            }
        }
    }
    newest_first
        .iter()
        .rev()
        .filter(|s| !keep.contains(s.name.as_str()))
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn policy(text: &str) -> Policy {
        let mut p = Policy::default();
        p.apply_text(text).unwrap();
        p
    }

    fn at(text: &str) -> i64 {
        text.parse::<DateTime<Utc>>().unwrap().timestamp_millis()
    }

    fn snap(name: &str, time: &str) -> Candidate {
        Candidate {
            name: name.into(),
            created_ms: at(time),
            protected: false,
        }
    }

    #[test]
    fn no_rule_keeps_everything() {
        let now: DateTime<Utc> = "2026-03-10T00:00:00Z".parse().unwrap();
        let all = [snap("a", "2020-01-01T00:00:00Z")];
        assert!(to_delete(&policy("at=1"), &all, &now).is_empty());
    }

    #[test]
    fn retain_days_drops_only_old_ones_and_spares_protected() {
        let now: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
        let mut old = snap("old-protected", "2026-03-01T00:00:00Z");
        old.protected = true;
        let all = [
            snap("old", "2026-03-02T00:00:00Z"),
            old,
            snap("young", "2026-03-09T00:00:00Z"),
        ];
        assert_eq!(to_delete(&policy("retain-days=7"), &all, &now), vec!["old"]);
    }

    #[test]
    fn count_rules_keep_the_newest_per_bucket() {
        let now: DateTime<Utc> = "2026-03-10T12:00:00Z".parse().unwrap();
        let all = [
            snap("d8-a", "2026-03-08T01:00:00Z"),
            snap("d8-b", "2026-03-08T23:00:00Z"),
            snap("d9-a", "2026-03-09T01:00:00Z"),
            snap("d9-b", "2026-03-09T05:00:00Z"),
            snap("d10", "2026-03-10T01:00:00Z"),
        ];
        let gone = to_delete(&policy("keep-daily=2"), &all, &now);
        assert_eq!(gone, vec!["d8-a", "d8-b", "d9-a"]);
        let gone = to_delete(&policy("keep-last=1 keep-daily=3"), &all, &now);
        assert_eq!(gone, vec!["d8-a", "d9-a"]);
        let gone = to_delete(&policy("keep-last=2"), &all, &now);
        assert_eq!(gone, vec!["d8-a", "d8-b", "d9-a"]);
    }
}
