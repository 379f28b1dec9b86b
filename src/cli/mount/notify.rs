//! systemd readiness: the sd_notify(3) protocol, written out so that
//! snapfs needs no libsystemd. When systemd (or anything else) starts the
//! mount with `NOTIFY_SOCKET` set, the mount sends one datagram when it
//! serves (`READY=1`, `STATUS=`, `MAINPID=`) and one when it begins to stop
//! (`STOPPING=1`). A unit with `Type=notify` then starts what depends on
//! the mount (VMs) only once it can be used.
//!
//! The variable is taken out of the environment as it is read: hooks and
//! other children must not inherit it and speak for the mount. A message
//! that cannot be sent is logged, never fatal: the mount serves anyway.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where readiness messages go: the socket `NOTIFY_SOCKET` named.
pub struct Notifier {
    /// The variable's value, as read (handed on to a `--daemon` copy).
    value: OsString,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` out of the environment; None when unset or
    /// empty. Call before any thread starts (the environment is not
    /// thread-safe to change).
    pub fn take_from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET_ENV)?;
        std::env::remove_var(NOTIFY_SOCKET_ENV);
        if value.is_empty() {
            return None;
        }
        Some(Notifier { value })
    }

    /// The value to put into the environment of a `--daemon` copy, which
    /// reports readiness itself.
    pub fn env_value(&self) -> &OsString {
        &self.value
    }

    /// The mount serves: from now on, what needs it may start.
    pub fn ready(&self, store_root: &Path, mountpoint: &Path) {
        let message = format!(
            "READY=1\nSTATUS=serving {} on {}\nMAINPID={}\n",
            status_text(store_root),
            status_text(mountpoint),
            std::process::id()
        );
        self.send("serves", &message);
    }

    /// The mount begins to stop (a signal, or `snapfs umount`).
    pub fn stopping(&self, mountpoint: &Path) {
        let message = format!(
            "STOPPING=1\nSTATUS=unmounting {}\n",
            status_text(mountpoint)
        );
        self.send("stops", &message);
    }

    fn send(&self, what: &str, message: &str) {
        let result = socket_address(&self.value).and_then(|address| {
            let socket = UnixDatagram::unbound()?;
            socket.send_to_addr(message.as_bytes(), &address)
        });
        match result {
            Ok(sent) if sent == message.len() => {}
            Ok(sent) => log::warn!(
                "{NOTIFY_SOCKET_ENV} {}: sent {sent} of {} bytes",
                self.value.to_string_lossy(),
                message.len()
            ),
            Err(e) => log::warn!(
                "cannot tell {NOTIFY_SOCKET_ENV} {} that the mount {what}: {e}",
                self.value.to_string_lossy()
            ),
        }
    }
}

/// The address `NOTIFY_SOCKET` names: a path, or with a leading `@` an
/// abstract socket (the `@` stands for the leading NUL byte).
fn socket_address(value: &OsString) -> std::io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(Path::new(value)),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name starting with '@'",
        )),
    }
}

/// A path as one line of a `STATUS=` value (a newline would end the field).
fn status_text(path: &Path) -> String {
    path.display().to_string().replace('\n', "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_abstract_addresses_are_told_apart() {
        let path = socket_address(&OsString::from("/run/systemd/notify")).unwrap();
        assert_eq!(path.as_pathname(), Some(Path::new("/run/systemd/notify")));
        let abstract_name = socket_address(&OsString::from("@snapfs/notify")).unwrap();
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"snapfs/notify"[..])
        );
        assert!(socket_address(&OsString::from("relative/socket")).is_err());
    }

    #[test]
    fn ready_reaches_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            value: path.clone().into_os_string(),
        };
        notifier.ready(Path::new("/var/lib/snapfs"), Path::new("/mnt/snap"));
        let mut buf = [0u8; 512];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!(
                "READY=1\nSTATUS=serving /var/lib/snapfs on /mnt/snap\nMAINPID={}\n",
                std::process::id()
            )
        );
    }
}
