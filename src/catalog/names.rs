//! Rules for disk and snapshot names. Names become folder and file names
//! in the mount, so the rules also keep every name inside its folder.

use crate::error::{Error, Result};

pub const MAX_SNAPSHOT_NAME: usize = 128;
pub const MAX_DISK_COMPONENT: usize = 64;
/// Names starting with this are made by policies only.
pub const AUTO_PREFIX: &str = "auto";

/// A live disk's own file in its folder: never a snapshot's name.
pub const LIVE_FILE: &str = "live";

/// How much of a name an error or a `.status` line repeats.
const SHOWN_CHARS: usize = 64;

/// `name` as messages show it: a megabyte written to `.create` must not be
/// echoed into `.status`, the log and every error line.
pub fn shown(name: &str) -> String {
    crate::units::shortened(name, SHOWN_CHARS)
}

fn invalid(what: &'static str, name: &str, why: impl Into<String>) -> Error {
    Error::InvalidName {
        what,
        name: shown(name),
        why: why.into(),
    }
}

fn check_component(what: &'static str, whole: &str, part: &str, max: usize) -> Result<()> {
    if part.is_empty() {
        return Err(invalid(what, whole, "empty name or component"));
    }
    if part.len() > max {
        return Err(invalid(
            what,
            whole,
            format!("longer than {max} characters"),
        ));
    }
    if part.starts_with('.') || part.starts_with('-') {
        return Err(invalid(what, whole, "must not start with '.' or '-'"));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(invalid(
            what,
            whole,
            format!("character {bad:?} not allowed (use letters, digits, '.', '_', '-', ':')"),
        ));
    }
    Ok(())
}

/// A snapshot name as a person may choose it: 1 to 128 of letters, digits,
/// `.` `_` `-` `:`, not starting with `.` or `-`, and not `auto...`.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    check_any_snapshot_name(name)?;
    if name.starts_with(AUTO_PREFIX) {
        return Err(invalid(
            "snapshot",
            name,
            "the prefix 'auto' is reserved for snapshots made by a policy",
        ));
    }
    Ok(())
}

/// A snapshot name, automatic ones included.
pub fn check_any_snapshot_name(name: &str) -> Result<()> {
    check_component("snapshot", name, name, MAX_SNAPSHOT_NAME)?;
    if name == LIVE_FILE {
        return Err(invalid(
            "snapshot",
            name,
            "'live' is reserved for a live disk's own file",
        ));
    }
    Ok(())
}

/// A disk name: `disk` or `group/disk`, each part like a snapshot name
/// (at most 64 characters).
pub fn check_disk_name(name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 2 {
        return Err(invalid("disk", name, "at most two components (group/disk)"));
    }
    for part in parts {
        check_component("disk", name, part, MAX_DISK_COMPONENT)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names() {
        for good in [
            "nightly",
            "a",
            "2026-11-28T10:00",
            "v1.2_x",
            &"x".repeat(128),
        ] {
            check_snapshot_name(good).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "..",
            ".",
            "with space",
            "nul\0",
            "é",
            "auto-1",
            "auto",
            "live",
            &"x".repeat(129),
        ] {
            assert!(check_snapshot_name(bad).is_err(), "{bad:?} accepted");
        }
        check_any_snapshot_name("auto-20261128-100000").unwrap();
    }

    #[test]
    fn errors_repeat_only_the_start_of_a_long_name() {
        let huge = "y".repeat(1 << 20);
        let message = check_snapshot_name(&huge).unwrap_err().to_string();
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.contains(&"y".repeat(SHOWN_CHARS)) && message.contains("1048576 bytes"));
        assert_eq!(shown("nightly"), "nightly");
        // Cut at a character, not inside one.
        assert!(shown(&"é".repeat(100)).starts_with(&"é".repeat(SHOWN_CHARS)));
    }

    #[test]
    fn disk_names() {
        for good in ["system", "vm1/system", "a.b/c-d"] {
            check_disk_name(good).unwrap();
        }
        for bad in ["", "/", "a/", "/a", "a/b/c", "../x", "a/..", ".x", "a b"] {
            assert!(check_disk_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
