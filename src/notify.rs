//! The service manager's readiness protocol (sd_notify(3)): newline-separated `KEY=VALUE` lines
//! in one datagram to the `AF_UNIX` socket named by `NOTIFY_SOCKET`, a path or, with a leading
//! `@`, an abstract address.
//!
//! Written here rather than taken from the `sd-notify` crate: its 0.5.0 connects to
//! `NOTIFY_SOCKET` as a path, so the abstract addresses systemd hands to services in containers
//! (`@/org/freedesktop/systemd1/notify/...`) fail with ENOENT, and it reads the environment on
//! every call. The protocol is one `sendto`; the socket is opened once and kept.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A connection to the service manager, if this process was started by one that listens.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// A failed send is logged once, not on every status line.
    warned: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `None` when it is unset or empty (not started by a service manager
    /// that wants to hear), or names nothing a datagram can be sent to (said in a warning).
    pub fn from_env() -> Option<Notifier> {
        Self::for_address(std::env::var_os("NOTIFY_SOCKET")?)
    }

    fn for_address(value: OsString) -> Option<Notifier> {
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            return None;
        }
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&value),
        };
        let opened = addr.and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match opened {
            Ok((socket, addr)) => Some(Notifier {
                socket,
                addr,
                warned: AtomicBool::new(false),
            }),
            Err(e) => {
                tracing::warn!(error = %e, socket = ?value, "NOTIFY_SOCKET is not a socket address; the service manager will not hear that this process is ready");
                None
            }
        }
    }

    /// Sends `lines` (`KEY=VALUE`, one per line) in one datagram. Best effort: the service
    /// manager may be gone while this process ends; the first failure is logged.
    pub fn send(&self, lines: &str) {
        if let Err(e) = self.socket.send_to_addr(lines.as_bytes(), &self.addr)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }

    /// Ready, with the status line `systemctl status` shows.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// A status is one line: a newline would start another `KEY=VALUE`.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How often to send `WATCHDOG=1`: half the interval the service manager set (`WATCHDOG_USEC`),
/// if it is meant for this process (`WATCHDOG_PID`, when set, is this pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok()
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::for_address(path.into_os_string()).unwrap();
        n.ready("3 secrets\nmounted");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=3 secrets mounted");

        let name = format!("secretfs-notify-test-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::for_address(format!("@{name}").into()).unwrap();
        n.stopping();
        let len = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn an_empty_socket_variable_means_no_service_manager() {
        assert!(Notifier::for_address(OsString::new()).is_none());
    }
}
