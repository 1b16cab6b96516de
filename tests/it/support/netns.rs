//! Another host on this machine: a network namespace joined to this one by a veth pair, for
//! what must be seen to come from elsewhere (an issuer that is not on this host). Needs root and
//! iproute2; removed (with its link) when dropped.

use std::process::Command;

pub struct OtherHost {
    name: String,
    /// This host's address on the link.
    pub here: String,
    /// The other host's address.
    pub there: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OtherHost {
    /// A namespace of its own, `10.201.N.2`, reached from here at `10.201.N.1`.
    pub fn new() -> OtherHost {
        let n = std::process::id() % 250 + 1;
        let name = format!("sfs-other-{}", std::process::id());
        let (outer, inner) = (format!("sfsh{n}"), format!("sfsn{n}"));
        let (here, there) = (format!("10.201.{n}.1"), format!("10.201.{n}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let host = OtherHost { name, here, there };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &host.name]);
        ip(&["addr", "add", &format!("{}/30", host.here), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", host.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{}/30", host.there), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        host
    }

    /// `PROGRAM ARGS...` to run on the other host.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        // Deleting the namespace takes its end of the pair, and with it ours.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
