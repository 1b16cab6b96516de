//! A service manager's end of the readiness protocol: a datagram socket bound by the test, the
//! way systemd binds one for a service.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::{Duration, Instant};

/// A socket the way systemd binds one for a service: a path, or an abstract name (`@...`).
pub struct NotifySocket {
    socket: UnixDatagram,
    /// What goes into NOTIFY_SOCKET.
    pub address: String,
}

impl NotifySocket {
    pub fn at_path(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).unwrap();
        NotifySocket {
            socket,
            address: path.display().to_string(),
        }
    }

    pub fn abstract_named(name: &str) -> NotifySocket {
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        NotifySocket {
            socket: UnixDatagram::bind_addr(&addr).unwrap(),
            address: format!("@{name}"),
        }
    }

    /// The next datagram, within `secs`.
    pub fn next(&self, secs: u64) -> Option<String> {
        self.socket
            .set_read_timeout(Some(Duration::from_secs(secs)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    /// Datagrams until one contains `wanted` (all of them returned), within `secs`.
    pub fn until(&self, wanted: &str, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(m) = self.next(1) {
                let done = m.contains(wanted);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
        panic!("no {wanted:?} within {secs} s; got {seen:?}");
    }
}

impl NotifySocket {
    /// Every datagram sent so far (waiting up to `ms` for each next one).
    pub fn drain(&self, ms: u64) -> Vec<String> {
        self.socket
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        all
    }
}
