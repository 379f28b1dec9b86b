//! Snapshot policies: when a disk is snapshotted automatically, which
//! automatic snapshots are kept, and how fast snapshots may read.
//!
//! A policy has a text form, used by `.policy` in the mount and shown by
//! `snapfs policy show`: space-separated `key=value` settings, e.g.
//! `at=2,14 days=mon,wed,fri retain-days=7 keep-last=3 max-rate=50M`; a
//! value with spaces is quoted: `pre-hook='virsh domfsfreeze vm1'`.

pub mod prune;
pub mod retention;
pub mod runner;
pub mod schedule;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::parse_size;

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
pub const MAX_RETAIN_DAYS: u32 = 65536;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Hours of the day (0-23, local time) to snapshot at.
    #[serde(default)]
    pub at: Vec<u8>,
    /// Days of the week the hours apply to (0 = Monday); empty: every day.
    #[serde(default)]
    pub days: Vec<u8>,
    /// Snapshot every this many seconds instead of at fixed hours.
    #[serde(default)]
    pub every_secs: Option<u64>,
    /// Delete automatic snapshots older than this many days (None: no age limit).
    #[serde(default)]
    pub retain_days: Option<u32>,
    #[serde(default)]
    pub keep: KeepRules,
    /// Cap on how fast a snapshot reads its source, bytes per second.
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Commands run before and after each automatic snapshot's read.
    #[serde(default)]
    pub pre_hook: Option<String>,
    #[serde(default)]
    pub post_hook: Option<String>,
    /// Seconds a hook may take (None: the default).
    #[serde(default)]
    pub hook_timeout_secs: Option<u64>,
}

/// Count rules, as backup tools have them: keep the newest snapshot of
/// each of the last N hours, days, ... (and the last N overall).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepRules {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
}

impl KeepRules {
    pub fn any(&self) -> bool {
        self.last.is_some()
            || self.hourly.is_some()
            || self.daily.is_some()
            || self.weekly.is_some()
            || self.monthly.is_some()
    }
}

fn invalid(why: impl Into<String>) -> Error {
    // Messages quote the setting, which may be a megabyte written to `.policy`.
    Error::Invalid(crate::units::shortened(&why.into(), 300))
}

/// `15m`, `2h`, `1d`, `30s`, `90` (seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        invalid(format!(
            "{text:?} is not a duration (examples: 30s, 15m, 2h, 1d)"
        ))
    })?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(invalid(format!(
                "unknown unit in duration {text:?} (use s, m, h, d)"
            )))
        }
    };
    let total = number
        .checked_mul(seconds)
        .filter(|&s| s > 0)
        .ok_or_else(|| invalid(format!("duration {text:?} must be positive and sane")))?;
    Ok(Duration::from_secs(total))
}

pub fn format_duration(secs: u64) -> String {
    match secs {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A size in the largest unit that divides it: `50M`, `1536K`, `1000`.
pub fn format_size_exact(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

pub fn parse_hours(text: &str) -> Result<Vec<u8>> {
    let mut hours = Vec::new();
    for part in text.split(',') {
        let hour: u8 = part
            .trim()
            .parse()
            .ok()
            .filter(|h| *h < 24)
            .ok_or_else(|| invalid(format!("hour {part:?} must be a number from 0 to 23")))?;
        hours.push(hour);
    }
    hours.sort_unstable();
    hours.dedup();
    Ok(hours)
}

pub fn parse_days(text: &str) -> Result<Vec<u8>> {
    let mut days = Vec::new();
    for part in text.split(',') {
        let name = part.trim().to_ascii_lowercase();
        let day = DAY_NAMES
            .iter()
            .position(|d| name.len() >= 3 && name.starts_with(d))
            .ok_or_else(|| {
                invalid(format!(
                    "day {part:?} is not one of mon,tue,wed,thu,fri,sat,sun"
                ))
            })?;
        days.push(day as u8);
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

/// None for `none`, else what `parse` makes of the value.
fn unless_none<T>(value: &str, parse: impl FnOnce(&str) -> Result<T>) -> Result<Option<T>> {
    if value == "none" {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

fn parse_retain_days(days: &str) -> Result<u32> {
    days.parse::<u32>()
        .ok()
        .filter(|d| (1..=MAX_RETAIN_DAYS).contains(d))
        .ok_or_else(|| {
            invalid(format!(
                "retain-days={days}: expected 1 to {MAX_RETAIN_DAYS} or forever"
            ))
        })
}

/// A hook command: one line, and quotable in the text form.
fn parse_hook(command: &str) -> Result<String> {
    if command.trim().is_empty() {
        return Err(invalid("a hook needs a command"));
    }
    if command.contains(['\n', '\r']) {
        return Err(invalid("a hook command must be one line"));
    }
    if command.contains('\'') && command.contains('"') {
        return Err(invalid(
            "a hook command cannot hold both ' and \" (put it in a script)",
        ));
    }
    Ok(command.to_string())
}

fn parse_count(key: &str, value: &str) -> Result<u32> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid(format!("{key}={value}: expected a count of at least 1")))
}

/// Splits policy text into `key=value` settings at white space, except
/// inside a quoted part of a value (`'...'` or `"..."`, no escapes); the
/// quotes go.
fn settings_of(text: &str) -> Result<Vec<(String, String)>> {
    let mut settings = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(settings);
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.contains(['\'', '"']) || chars.next_if_eq(&'=').is_none() {
            return Err(invalid(format!("{key:?} is not key=value")));
        }
        let mut value = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
            if c != '\'' && c != '"' {
                value.push(c);
                continue;
            }
            let mut closed = false;
            for q in chars.by_ref() {
                if q == c {
                    closed = true;
                    break;
                }
                value.push(q);
            }
            if !closed {
                return Err(invalid(format!("{key}=: unterminated quote")));
            }
        }
        settings.push((key, value));
    }
}

/// A hook command as the text form shows it: quoted when it has spaces.
fn quoted(command: &str) -> String {
    if !command.contains(char::is_whitespace) && !command.contains(['\'', '"']) {
        command.to_string()
    } else if command.contains('\'') {
        format!("\"{command}\"")
    } else {
        format!("'{command}'")
    }
}

impl Policy {
    /// Applies `key=value` settings (space or newline separated) on top of
    /// this policy. `none` clears a setting: `at=none`, `retain-days=forever`.
    pub fn apply_text(&mut self, text: &str) -> Result<()> {
        if !text.is_ascii() {
            return Err(invalid("policy text must be ASCII key=value settings"));
        }
        let mut any = false;
        for (key, value) in settings_of(text)? {
            any = true;
            self.set(&key, &value)?;
        }
        if !any {
            return Err(invalid(
                "no settings given (example: at=2,14 retain-days=7)",
            ));
        }
        self.validate()
    }

    /// One setting, by the names `.policy` and `policy show` use; `none`
    /// clears it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let count = |v: &str| parse_count(key, v);
        match key {
            "at" => self.at = unless_none(value, parse_hours)?.unwrap_or_default(),
            "days" => self.days = unless_none(value, parse_days)?.unwrap_or_default(),
            "every" => self.every_secs = unless_none(value, |v| Ok(parse_duration(v)?.as_secs()))?,
            "retain-days" if value == "forever" => self.retain_days = None,
            "retain-days" => self.retain_days = unless_none(value, parse_retain_days)?,
            "keep-last" => self.keep.last = unless_none(value, count)?,
            "keep-hourly" => self.keep.hourly = unless_none(value, count)?,
            "keep-daily" => self.keep.daily = unless_none(value, count)?,
            "keep-weekly" => self.keep.weekly = unless_none(value, count)?,
            "keep-monthly" => self.keep.monthly = unless_none(value, count)?,
            "max-rate" => {
                self.max_rate =
                    unless_none(value, |v| parse_size(v).map_err(invalid))?.filter(|r| *r > 0)
            }
            "pre-hook" => self.pre_hook = unless_none(value, parse_hook)?,
            "post-hook" => self.post_hook = unless_none(value, parse_hook)?,
            "hook-timeout" => {
                self.hook_timeout_secs = unless_none(value, |v| Ok(parse_duration(v)?.as_secs()))?
            }
            other => {
                return Err(invalid(format!(
                    "unknown setting {other:?} (known: at, days, every, retain-days, keep-last, \
                     keep-hourly, keep-daily, keep-weekly, keep-monthly, max-rate, pre-hook, \
                     post-hook, hook-timeout)"
                )))
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if self.every_secs.is_some() && !self.at.is_empty() {
            return Err(invalid(
                "a policy takes either at=HOURS or every=DURATION, not both",
            ));
        }
        if !self.days.is_empty() && self.at.is_empty() {
            return Err(invalid("days= needs at=HOURS"));
        }
        Ok(())
    }

    /// The hooks its automatic snapshots run.
    pub fn hooks(&self) -> crate::snapshot::hooks::Hooks {
        crate::snapshot::hooks::Hooks {
            pre: self.pre_hook.clone(),
            post: self.post_hook.clone(),
            timeout: self.hook_timeout_secs.map(Duration::from_secs),
        }
    }

    /// Whether the policy takes snapshots at all.
    pub fn schedules(&self) -> bool {
        self.every_secs.is_some() || !self.at.is_empty()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if !self.at.is_empty() {
            let hours: Vec<String> = self.at.iter().map(u8::to_string).collect();
            parts.push(format!("at={}", hours.join(",")));
        }
        if !self.days.is_empty() {
            let days: Vec<&str> = self
                .days
                .iter()
                .map(|d| DAY_NAMES[*d as usize % 7])
                .collect();
            parts.push(format!("days={}", days.join(",")));
        }
        if let Some(secs) = self.every_secs {
            parts.push(format!("every={}", format_duration(secs)));
        }
        parts.push(match self.retain_days {
            Some(days) => format!("retain-days={days}"),
            None => "retain-days=forever".into(),
        });
        let counts = [
            ("keep-last", self.keep.last),
            ("keep-hourly", self.keep.hourly),
            ("keep-daily", self.keep.daily),
            ("keep-weekly", self.keep.weekly),
            ("keep-monthly", self.keep.monthly),
        ];
        for (key, value) in counts {
            if let Some(n) = value {
                parts.push(format!("{key}={n}"));
            }
        }
        if let Some(rate) = self.max_rate {
            parts.push(format!("max-rate={}", format_size_exact(rate)));
        }
        if let Some(command) = &self.pre_hook {
            parts.push(format!("pre-hook={}", quoted(command)));
        }
        if let Some(command) = &self.post_hook {
            parts.push(format!("post-hook={}", quoted(command)));
        }
        if let Some(secs) = self.hook_timeout_secs {
            parts.push(format!("hook-timeout={}", format_duration(secs)));
        }
        write!(f, "{}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let mut policy = Policy::default();
        policy
            .apply_text("at=14,2 days=fri,mon,wed retain-days=7 keep-last=3 keep-daily=7")
            .unwrap();
        assert_eq!(policy.at, vec![2, 14]);
        assert_eq!(policy.days, vec![0, 2, 4]);
        let text = policy.to_string();
        assert_eq!(
            text,
            "at=2,14 days=mon,wed,fri retain-days=7 keep-last=3 keep-daily=7"
        );
        let mut again = Policy::default();
        again.apply_text(&text).unwrap();
        assert_eq!(again, policy);
    }

    #[test]
    fn every_and_rate() {
        let mut policy = Policy::default();
        policy.apply_text("every=15m max-rate=50M").unwrap();
        assert_eq!(policy.every_secs, Some(900));
        assert_eq!(policy.max_rate, Some(50 << 20));
        assert_eq!(
            policy.to_string(),
            "every=15m retain-days=forever max-rate=50M"
        );
        let mut again = Policy::default();
        again.apply_text(&policy.to_string()).unwrap();
        assert_eq!(again, policy);
    }

    #[test]
    fn hooks_round_trip_quoted() {
        let mut policy = Policy::default();
        policy
            .apply_text("every=1h pre-hook='virsh domfsfreeze vm1' post-hook=\"echo 'thawed'\" hook-timeout=30s")
            .unwrap();
        assert_eq!(policy.pre_hook.as_deref(), Some("virsh domfsfreeze vm1"));
        assert_eq!(policy.post_hook.as_deref(), Some("echo 'thawed'"));
        assert_eq!(policy.hook_timeout_secs, Some(30));
        let text = policy.to_string();
        assert_eq!(
            text,
            "every=1h retain-days=forever pre-hook='virsh domfsfreeze vm1' \
             post-hook=\"echo 'thawed'\" hook-timeout=30s"
        );
        let mut again = Policy::default();
        again.apply_text(&text).unwrap();
        assert_eq!(again, policy);
        again.apply_text("pre-hook=none").unwrap();
        assert_eq!(again.pre_hook, None);
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "",
            "at=24",
            "at=-1",
            "at=x",
            "days=funday at=1",
            "days=mon",
            "every=0",
            "every=5y",
            "retain-days=0",
            "retain-days=65537",
            "keep-last=0",
            "nonsense=1",
            "at",
            "at=1 every=1h",
            "max-rate=fast",
            "at=1\u{e9}",
            "pre-hook='unterminated",
            "pre-hook=",
            "'pre-hook'=x",
        ] {
            let mut policy = Policy::default();
            assert!(policy.apply_text(bad).is_err(), "{bad:?} accepted");
        }
    }
}
