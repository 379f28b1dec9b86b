//! What `.status` shows: per disk, the snapshot running now with its
//! progress, then the most recent outcomes (accomplished, failed, refused,
//! skipped, notes). The same data, as JSON, is the disk folder's
//! `user.snapfs.status` xattr: the declared form for programs (the CLI
//! follows a snapshot through it), while `.status` is for people.
//!
//! ```text
//! {"disk": "vm1/system",
//!  "running": {"snapshot": "nightly", "percent": 12.5, "done_bytes": 1048576,
//!              "total_bytes": 8388608, "added_bytes": 524288, "elapsed_ms": 1200} | null,
//!  "recent": [{"time_ms": 1732460400000, "outcome": "accomplished" | "failed" |
//!              "refused" | "skipped" | "note", "snapshot": "nightly" | null,
//!              "why": "..." | null, "line": "the line .status shows"}, ...]}
//! ```
//!
//! `recent` is oldest first; the oldest entries are left out when the
//! value would exceed 64 KiB (the kernel's limit for an xattr).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::catalog::names::shown;
use crate::catalog::now_ms;
use crate::catalog::SnapshotRecord;
use crate::snapshot::Progress;
use crate::units::{format_bytes, format_time_ms, shortened};

/// Outcomes kept per disk.
const RECENT: usize = 20;
/// Characters kept of one outcome line.
const MAX_LINE: usize = 1024;
/// XATTR_SIZE_MAX: a larger value cannot be read through getxattr(2).
const MAX_REPORT: usize = 64 * 1024;

/// The machine-readable status of one disk (`user.snapfs.status`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub disk: String,
    pub running: Option<RunningReport>,
    pub recent: Vec<RecentReport>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunningReport {
    pub snapshot: String,
    /// 0 until the size is known.
    pub percent: f64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub added_bytes: u64,
    pub elapsed_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecentReport {
    pub time_ms: i64,
    pub outcome: Outcome,
    /// The snapshot the outcome is about, if any.
    pub snapshot: Option<String>,
    /// Why it failed, was refused or skipped.
    pub why: Option<String>,
    /// The line `.status` shows for it.
    pub line: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Accomplished,
    Failed,
    Refused,
    Skipped,
    /// Anything else worth a line: a policy set or refused, a prune.
    Note,
}

#[derive(Default)]
pub struct StatusBoard {
    disks: Mutex<HashMap<String, DiskStatus>>,
}

#[derive(Default)]
struct DiskStatus {
    running: Option<(String, Progress)>,
    recent: VecDeque<RecentReport>,
}

impl StatusBoard {
    fn with<T>(&self, disk: &str, f: impl FnOnce(&mut DiskStatus) -> T) -> T {
        let mut disks = self.disks.lock().unwrap_or_else(|e| e.into_inner());
        f(disks.entry(disk.to_string()).or_default())
    }

    /// Shows `name` running on `disk`. The caller holds the disk's
    /// running mark (`SnapshotService`), so nothing else runs there.
    pub fn start(&self, disk: &str, name: &str) {
        self.with(disk, |s| {
            s.running = Some((name.to_string(), Progress::default()));
        });
    }

    pub fn progress(&self, disk: &str, progress: &Progress) {
        self.with(disk, |s| {
            if let Some((_, p)) = s.running.as_mut() {
                *p = progress.clone();
            }
        });
    }

    pub fn accomplished(&self, disk: &str, record: &SnapshotRecord, seconds: f64) {
        let method = record
            .method
            .map(|m| format!(", method {m}"))
            .unwrap_or_default();
        let text = format!(
            "accomplished {}: {} in {seconds:.1} s, added {}{method}",
            record.name,
            format_bytes(record.size),
            format_bytes(record.added_bytes)
        );
        self.finish(disk, &record.name, Outcome::Accomplished, None, &text);
    }

    pub fn failed(&self, disk: &str, name: &str, why: &str) {
        let text = format!("failed {name}: {why}");
        self.finish(disk, name, Outcome::Failed, Some(why), &text);
    }

    /// A name written to `.create` that was not taken.
    pub fn refused(&self, disk: &str, name: &str, why: &str) {
        let name = shown(name);
        let text = format!("refused {name:?}: {why}");
        self.push(disk, Outcome::Refused, Some(name), Some(why), &text);
    }

    /// An automatic snapshot a policy did not start.
    pub fn skipped(&self, disk: &str, name: &str, why: &str) {
        let text = format!("skipped {name}: {why}");
        self.push(
            disk,
            Outcome::Skipped,
            Some(name.to_string()),
            Some(why),
            &text,
        );
    }

    /// A line that is not about one snapshot (a policy set, a prune).
    pub fn note(&self, disk: &str, line: &str) {
        self.push(disk, Outcome::Note, None, None, line);
    }

    fn finish(&self, disk: &str, name: &str, outcome: Outcome, why: Option<&str>, text: &str) {
        self.with(disk, |s| {
            if s.running
                .as_ref()
                .is_some_and(|(running, _)| running == name)
            {
                s.running = None;
            }
        });
        self.push(disk, outcome, Some(name.to_string()), why, text);
    }

    fn push(
        &self,
        disk: &str,
        outcome: Outcome,
        snapshot: Option<String>,
        why: Option<&str>,
        text: &str,
    ) {
        let time_ms = now_ms();
        // Bounded whatever a writer sent: `.status` stays small and readable.
        let line = shortened(&format!("{} {text}", format_time_ms(time_ms)), MAX_LINE);
        let entry = RecentReport {
            time_ms,
            outcome,
            snapshot,
            why: why.map(|w| shortened(w, MAX_LINE)),
            line,
        };
        self.with(disk, |s| {
            if s.recent.len() == RECENT {
                s.recent.pop_front();
            }
            s.recent.push_back(entry);
        });
    }

    pub fn render(&self, disk: &str) -> String {
        self.with(disk, |s| {
            let mut text = String::new();
            let _ = writeln!(text, "disk {disk}");
            match &s.running {
                Some((name, p)) => {
                    let percent = p.percent();
                    let _ = writeln!(
                        text,
                        "running: {name} {percent:.1}% {} of {}, {}/s, elapsed {:.1} s",
                        format_bytes(p.done_bytes),
                        format_bytes(p.total_bytes),
                        format_bytes(p.rate() as u64),
                        p.elapsed.as_secs_f64()
                    );
                }
                None => text.push_str("running: none\n"),
            }
            text.push_str("recent:\n");
            for entry in &s.recent {
                let _ = writeln!(text, "{}", entry.line);
            }
            text
        })
    }

    /// The status of `disk` as data.
    pub fn report(&self, disk: &str) -> StatusReport {
        self.with(disk, |s| StatusReport {
            disk: disk.to_string(),
            running: s.running.as_ref().map(|(name, p)| RunningReport {
                snapshot: name.clone(),
                percent: p.percent(),
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
                added_bytes: p.added_bytes,
                elapsed_ms: p.elapsed.as_millis() as u64,
            }),
            recent: s.recent.iter().cloned().collect(),
        })
    }

    /// `report` as the JSON of `user.snapfs.status`, within 64 KiB.
    pub fn report_json(&self, disk: &str) -> String {
        let mut report = self.report(disk);
        loop {
            // Plain strings and numbers: serializing cannot fail.
            let json = serde_json::to_string(&report).unwrap_or_default();
            if json.len() <= MAX_REPORT || report.recent.is_empty() {
                return json;
            }
            report.recent.remove(0);
        }
    }
}

impl StatusReport {
    /// The last outcome about snapshot `name`, if any is recent.
    pub fn last_about(&self, name: &str) -> Option<&RecentReport> {
        self.recent
            .iter()
            .rev()
            .find(|r| r.snapshot.as_deref() == Some(name))
    }
}
