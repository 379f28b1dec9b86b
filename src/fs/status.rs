//! What `.status` shows: per disk, the snapshot running now with its
//! progress, then the most recent outcomes (accomplished, failed, skipped).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;

use crate::catalog::now_ms;
use crate::catalog::SnapshotRecord;
use crate::snapshot::Progress;
use crate::units::{format_bytes, format_time_ms};

/// Outcomes kept per disk.
const RECENT: usize = 20;
/// Characters kept of one outcome line.
const MAX_LINE: usize = 1024;

#[derive(Default)]
pub struct StatusBoard {
    disks: Mutex<HashMap<String, DiskStatus>>,
}

#[derive(Default)]
struct DiskStatus {
    running: Option<(String, Progress)>,
    recent: VecDeque<String>,
}

impl StatusBoard {
    fn with<T>(&self, disk: &str, f: impl FnOnce(&mut DiskStatus) -> T) -> T {
        let mut disks = self.disks.lock().unwrap_or_else(|e| e.into_inner());
        f(disks.entry(disk.to_string()).or_default())
    }

    /// Marks `name` running on `disk`; false (and no change) if another
    /// snapshot of the disk is running.
    pub fn try_start(&self, disk: &str, name: &str) -> bool {
        self.with(disk, |s| {
            if s.running.is_some() {
                return false;
            }
            s.running = Some((name.to_string(), Progress::default()));
            true
        })
    }

    pub fn progress(&self, disk: &str, progress: &Progress) {
        self.with(disk, |s| {
            if let Some((_, p)) = s.running.as_mut() {
                *p = progress.clone();
            }
        });
    }

    pub fn accomplished(&self, disk: &str, record: &SnapshotRecord, seconds: f64) {
        let line = format!(
            "{} accomplished {}: {} in {seconds:.1} s, added {}",
            format_time_ms(now_ms()),
            record.name,
            format_bytes(record.size),
            format_bytes(record.added_bytes)
        );
        self.finish(disk, &record.name, line);
    }

    pub fn failed(&self, disk: &str, name: &str, why: &str) {
        let line = format!("{} failed {name}: {why}", format_time_ms(now_ms()));
        self.finish(disk, name, line);
    }

    /// A line that is not the end of a running snapshot (a refused name,
    /// a skipped policy run).
    pub fn note(&self, disk: &str, line: &str) {
        let line = format!("{} {line}", format_time_ms(now_ms()));
        self.with(disk, |s| push_recent(s, line));
    }

    fn finish(&self, disk: &str, name: &str, line: String) {
        self.with(disk, |s| {
            if s.running
                .as_ref()
                .is_some_and(|(running, _)| running == name)
            {
                s.running = None;
            }
            push_recent(s, line);
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
            for line in &s.recent {
                let _ = writeln!(text, "{line}");
            }
            text
        })
    }
}

fn push_recent(status: &mut DiskStatus, line: String) {
    // Bounded whatever a writer sent: `.status` stays small and readable.
    let line = crate::units::shortened(&line, MAX_LINE);
    if status.recent.len() == RECENT {
        status.recent.pop_front();
    }
    status.recent.push_back(line);
}
