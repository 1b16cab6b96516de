//! The node agent across its own death: killed (`kill -9`) while the kubelet stand-in publishes
//! 100 volumes at once, then started again, as a DaemonSet restarts it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use super::publish::{Container, Node, results};
use crate::support::{assert_no_canary, eventually};

/// The secretfs mounts under `dir`, by mountinfo.
fn secretfs_mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-").unwrap();
            f[4].starts_with(dir) && f[dash + 2] == "secretfs"
        })
        .map(|l| l.split(' ').nth(4).unwrap().to_owned())
        .collect()
}

/// Whether a reader of `dir` gets an answer (any: an error counts) within five seconds, from a
/// process of its own, so a hang is seen rather than suffered.
fn answers(dir: &str) -> bool {
    let status = Command::new("timeout")
        .args(["5", "ls", "-A", dir])
        .output()
        .unwrap()
        .status;
    status.code() != Some(124)
}

#[test]
fn an_agent_killed_during_100_publishes_leaves_no_hanging_mount_and_serves_again() {
    let Some(mut n) = Node::start(
        "an_agent_killed_during_100_publishes_leaves_no_hanging_mount_and_serves_again",
    ) else {
        return;
    };
    n.bind("trainers", "ml", "trainer", &["HF_TOKEN", "SHARED"]);
    n.bind("frontends", "web", "frontend", &["OPENAI_API_KEY"]);
    let pods: Vec<(String, String, &str)> = (0..100)
        .map(|i| {
            let pod = format!("pod-{i:03}");
            let (token, secrets) = if i % 2 == 0 {
                (n.pod_token("ml", "trainer", &pod), "HF_TOKEN,SHARED")
            } else {
                (n.pod_token("web", "frontend", &pod), "OPENAI_API_KEY")
            };
            (pod, token, secrets)
        })
        .collect();
    let calls: Vec<Value> = pods
        .iter()
        .map(|(pod, token, secrets)| {
            n.publish(
                &format!("vol-{pod}"),
                &n.target(pod),
                n.context(pod, token, &[("secrets", secrets), ("uid", "1000")]),
            )
        })
        .collect();

    // Four pods run first, their containers each holding their own view of their volume.
    for r in n.kubelet(true, calls[..4].to_vec()) {
        assert_eq!(r["code"], "OK", "{r}");
    }
    let containers: Vec<Container> = (0..4)
        .map(|i| {
            Container::start(
                &n.target(&pods[i].0),
                &n.w.s.path().join(format!("ctr-{i}")),
            )
        })
        .collect();
    assert_eq!(
        containers[0].read("HF_TOKEN").as_deref(),
        Ok("hf_identity_value")
    );
    assert_eq!(
        containers[1].read("OPENAI_API_KEY").as_deref(),
        Ok("sk-identity-value")
    );

    // Killed once some volumes are mounted and others not yet.
    let kubelet = n.kubelet_start(true, calls.clone());
    assert!(
        eventually(20, || secretfs_mounts_under(&n.kubelet).len() >= 10),
        "no volume was mounted: {}",
        n.logs()
    );
    n.agent
        .signal_and_wait(Signal::SIGKILL, Duration::from_secs(10));
    let first = results(kubelet);
    assert_eq!(first.len(), 100);
    // Every mount it left answers a reader at once (a dead connection's error), none hangs.
    let left = secretfs_mounts_under(&n.kubelet);
    assert!(!left.is_empty());
    for dir in &left {
        assert!(answers(dir), "a reader of {dir} hangs");
    }
    // A container's reader answers at once too: an error, or the kernel's cached copy.
    assert_ne!(containers[0].read("HF_TOKEN"), Err("hung".into()));

    // Started again: the volumes of its state file are mounted again over the dead ones (empty
    // until their pods' tokens come), and every mount answers.
    n.restart();
    for dir in secretfs_mounts_under(&n.kubelet) {
        assert!(answers(&dir), "a reader of {dir} hangs after the restart");
    }
    let logs = n.logs();
    let restored: usize = logs
        .rsplit_once("volumes restored")
        .and_then(|(before, _)| before.rsplit_once('(')?.1.trim().parse().ok())
        .unwrap_or_else(|| panic!("{logs}"));
    // The ones its state file had when it died (the four at least); the others the kubelet's
    // retry mounts as new, over what the killed agent left.
    assert!(restored >= 4, "{logs}");
    // The running containers see the restored volumes at once (empty, not dead), and their
    // secrets once the kubelet republishes.
    let empty = containers[2].read("HF_TOKEN").unwrap_err();
    assert!(empty.contains("No such file"), "{empty}");
    // The kubelet publishes again (it retries what failed and republishes the rest): all
    // serve, each its own identity's secrets, through one long-poll per identity.
    let again = n.kubelet(true, calls.clone());
    for r in &again {
        assert_eq!(r["code"], "OK", "{r}\n{}", n.logs());
    }
    assert_eq!(
        containers[0].read("HF_TOKEN").as_deref(),
        Ok("hf_identity_value")
    );
    assert_eq!(
        containers[3].read("OPENAI_API_KEY").as_deref(),
        Ok("sk-identity-value")
    );
    // Not the kernel's cached copy from before the kill: a rotation reaches the container.
    let rotated = crate::support::unique_canary("node-restart");
    n.set_value("HF_TOKEN", &rotated);
    assert!(
        eventually(5, || containers[0].read("HF_TOKEN").as_deref()
            == Ok(rotated.as_str())),
        "the container does not see the new mount: {:?}",
        containers[0].read("HF_TOKEN")
    );
    for (i, (pod, _, secrets)) in pods.iter().enumerate() {
        let mut names: Vec<String> = std::fs::read_dir(n.target(pod))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.join(","), *secrets, "pod {i}");
    }
    assert_eq!(
        std::fs::read(n.target("pod-000").join("HF_TOKEN")).unwrap(),
        rotated.as_bytes()
    );
    assert!(
        eventually(5, || n.metric("long_polls_held") == 2.0),
        "{} long-polls held for 2 identities",
        n.metric("long_polls_held")
    );
    // A live mount per volume, over the dead ones the killed agent left.
    let mounts = secretfs_mounts_under(&n.kubelet);
    let distinct: std::collections::BTreeSet<&String> = mounts.iter().collect();
    assert_eq!(distinct.len(), 100);

    // The state file lists the volumes, root-only, and holds no token and no value; neither do
    // the agent's command line, environment or log.
    let state = std::fs::read_to_string(n.state_file()).unwrap();
    let listed: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(listed["volumes"].as_array().unwrap().len(), 100);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(n.state_file()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let pid = n.agent.pid();
    let mut seen = state.into_bytes();
    for f in ["cmdline", "environ"] {
        seen.extend(std::fs::read(format!("/proc/{pid}/{f}")).unwrap());
    }
    seen.extend(n.logs().into_bytes());
    let seen = String::from_utf8_lossy(&seen).into_owned();
    for (_, token, _) in &pods {
        assert!(!seen.contains(token.as_str()), "a pod's token was kept");
    }
    for value in [
        rotated.as_str(),
        "hf_identity_value",
        "sk-identity-value",
        "shared-value",
    ] {
        assert!(!seen.contains(value), "a value was kept");
    }
    assert_no_canary("the agent's state and log", seen.as_bytes());

    // A rollout (SIGTERM): the volumes stay (the containers' views cannot be replaced from
    // outside, only covered), the state file keeps them, and the next agent serves them again
    // through the running containers.
    let status = n
        .agent
        .signal_and_wait(Signal::SIGTERM, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    let kept: Value =
        serde_json::from_str(&std::fs::read_to_string(n.state_file()).unwrap()).unwrap();
    assert_eq!(kept["volumes"].as_array().unwrap().len(), 100);
    n.restart();
    let again = n.kubelet(true, calls[..4].to_vec());
    assert!(again.iter().all(|r| r["code"] == "OK"), "{again:?}");
    assert_eq!(
        containers[0].read("HF_TOKEN").as_deref(),
        Ok(rotated.as_str())
    );

    // Unpublished: every layer at the target goes, and the directory.
    let unpublish: Vec<Value> = pods
        .iter()
        .map(|(pod, _, _)| n.unpublish(&format!("vol-{pod}"), &n.target(pod)))
        .collect();
    drop(containers);
    assert!(n.kubelet(true, unpublish).iter().all(|r| r["code"] == "OK"));
    let left = secretfs_mounts_under(&n.kubelet);
    assert!(left.is_empty(), "{left:?}");
    assert!(!n.target("pod-000").exists());
}
