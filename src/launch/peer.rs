//! Who is on the other end of a loopback TCP connection: the user that owns the client's
//! socket (what the broker lets through), and the process that holds it (for the audit).
//!
//! The owner comes from the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`), asked for the one
//! socket of the connection's four addresses. Written here rather than through a netlink crate:
//! it is one fixed request and one fixed answer (two C structs, 72 and 88 bytes), and the
//! alternative without netlink, reading `/proc/net/tcp`, walks the kernel's whole connection
//! table: 1.7 ms per read on this 24 GiB machine with 117 sockets (the table is sized by memory,
//! not by use), against about 20 µs for the lookup, and that on every new connection before a
//! byte is served (`scripts/bench-broker`'s first byte).

use std::net::SocketAddrV4;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// `SOCK_DIAG_BY_FAMILY` and `NLM_F_REQUEST` (linux/sock_diag.h, linux/netlink.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
/// `TCP_ESTABLISHED`: a socket being closed is a kernel record owned by uid 0, never a caller.
const ESTABLISHED: u8 = 1;
/// `struct nlmsghdr` and `struct inet_diag_req_v2`; `struct inet_diag_msg`'s uid and inode.
const HEADER: usize = 16;
const REQUEST: usize = 56;
const UID_AT: usize = HEADER + 64;
const INODE_AT: usize = HEADER + 68;
const STATE_AT: usize = HEADER + 1;

/// The uid owning the established socket of the client at `client` connected to `server`, and
/// the socket's inode; a client on a dual-stack IPv6 socket (`::ffff:127.0.0.1`) too.
/// `None`: the kernel cannot say (the caller is then refused).
pub fn owner(client: SocketAddrV4, server: SocketAddrV4) -> Option<(u32, u64)> {
    ask(libc::AF_INET as u8, client, server).or_else(|| ask(libc::AF_INET6 as u8, client, server))
}

/// One `SOCK_DIAG_BY_FAMILY` request for the socket whose source is `client` and destination
/// `server` (IPv4-mapped when `family` is IPv6).
fn ask(family: u8, client: SocketAddrV4, server: SocketAddrV4) -> Option<(u32, u64)> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    let mut msg = [0u8; HEADER + REQUEST];
    msg[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let req = &mut msg[HEADER..];
    req[0] = family;
    req[1] = libc::IPPROTO_TCP as u8;
    // Every state: the answer says which, and only an established one counts.
    req[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: ports and addresses in network order.
    let id = &mut req[8..56];
    id[0..2].copy_from_slice(&client.port().to_be_bytes());
    id[2..4].copy_from_slice(&server.port().to_be_bytes());
    let address = |a: &SocketAddrV4| -> [u8; 16] {
        let mut out = [0u8; 16];
        if family == libc::AF_INET as u8 {
            out[..4].copy_from_slice(&a.ip().octets());
        } else {
            out[..16].copy_from_slice(&a.ip().to_ipv6_mapped().octets());
        }
        out
    };
    id[4..20].copy_from_slice(&address(&client));
    id[20..36].copy_from_slice(&address(&server));
    // No interface; no cookie (INET_DIAG_NOCOOKIE).
    id[40..48].copy_from_slice(&[0xff; 8]);
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut answer = [0u8; 512];
    let n = recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut answer,
        MsgFlags::empty(),
    )
    .ok()?;
    let answer = &answer[..n];
    if answer.len() < INODE_AT + 4 {
        return None;
    }
    // Anything but the socket's record (NLMSG_ERROR: no such socket) says nothing.
    if u16::from_ne_bytes([answer[4], answer[5]]) != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let word = |at: usize| u32::from_ne_bytes(answer[at..at + 4].try_into().expect("4 bytes"));
    let (uid, inode) = (word(UID_AT), u64::from(word(INODE_AT)));
    (answer[STATE_AT] == ESTABLISHED && inode != 0).then_some((uid, inode))
}

/// The process holding the socket of `inode` (the first found: a socket inherited across a
/// fork is held by both), from the links in `/proc/PID/fd`: first among this process's
/// descendants (the workload and what it started: a few processes, where the caller nearly
/// always is), then among every process. For the audit only: a process this one may not look
/// into is not found.
pub fn pid_of_socket(inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let holds = |pid: u32| -> bool {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
    };
    let ours = std::process::id();
    let mut seen = vec![ours];
    let mut next = children(ours);
    while let Some(pid) = next.pop() {
        if seen.contains(&pid) {
            continue;
        }
        seen.push(pid);
        if holds(pid) {
            return Some(pid);
        }
        next.extend(children(pid));
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| !seen.contains(pid))
        .find(|&pid| holds(pid))
}

/// The children of every thread of `pid` (`/proc/PID/task/TID/children`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
