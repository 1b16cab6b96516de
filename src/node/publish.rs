//! What a `NodePublishVolume` asks for, checked before anything is done: every problem at once,
//! named for `kubectl describe pod`, and never the pod's token.

use std::path::{Component, Path, PathBuf};

use zeroize::Zeroizing;

use crate::secret::SecretName;

/// The volume attribute holding the pod's service-account tokens (the kubelet's, with
/// `tokenRequests` in the `CSIDriver`): `{"AUDIENCE": {"token": "...", ...}}`.
pub const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// A publish request, checked.
pub struct Publish {
    pub volume_id: String,
    pub target: PathBuf,
    pub secrets: Vec<SecretName>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: Option<u32>,
    pub binding: Option<String>,
    /// The pod's token for the agent's audience.
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publish")
            .field("volume_id", &self.volume_id)
            .field("target", &self.target)
            .field("secrets", &self.secrets)
            .field("token", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// Where a target path must lie: under the kubelet's directory, given as an absolute path
/// without `.` or `..`, so that no request can aim a mount elsewhere on the node.
pub fn target_under(target: &str, kubelet_dir: &Path) -> Result<PathBuf, String> {
    let path = Path::new(target);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if target.is_empty() || !path.is_absolute() || !plain {
        return Err(format!(
            "target_path {target:?} must be an absolute path without '.' or '..'"
        ));
    }
    if path == kubelet_dir || !path.starts_with(kubelet_dir) {
        return Err(format!(
            "target_path {target:?} is not under the kubelet directory {} (--kubelet-dir)",
            kubelet_dir.display()
        ));
    }
    Ok(path.to_owned())
}

/// Checks a publish request's fields and volume attributes; `audience` picks the pod's token.
pub fn check(
    volume_id: &str,
    target: &str,
    attributes: &std::collections::HashMap<String, String>,
    kubelet_dir: &Path,
    audience: &str,
) -> Result<Publish, Vec<String>> {
    let mut problems = Vec::new();
    if volume_id.is_empty() {
        problems.push("volume_id is empty".to_owned());
    }
    let target = target_under(target, kubelet_dir)
        .map_err(|e| problems.push(e))
        .ok();
    let mut secrets = Vec::new();
    match attributes.get("secrets").map(String::as_str) {
        None | Some("") => problems.push(
            "the volume names no secret: set volumeAttributes.secrets to their names, \
             comma-separated"
                .to_owned(),
        ),
        Some(list) => {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match SecretName::parse(name) {
                    Ok(n) if !secrets.contains(&n) => secrets.push(n),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("volumeAttributes.secrets: {e}")),
                }
            }
        }
    }
    let mut id = |key: &str| -> Option<u32> {
        let text = attributes.get(key)?;
        text.parse()
            .map_err(|_| problems.push(format!("volumeAttributes.{key} {text:?} is not a number")))
            .ok()
    };
    let uid = id("uid");
    let gid = id("gid");
    // The mount's own rule (read bits only, owner's included), as `mount --files` reads modes.
    let mode = attributes.get("mode").and_then(|text| {
        crate::render::parse_mode(text)
            .map(u32::from)
            .map_err(|e| problems.push(format!("volumeAttributes.mode: {e}")))
            .ok()
    });
    let binding = attributes.get("binding").cloned();
    let token = pod_token(attributes, audience)
        .map_err(|e| problems.push(e))
        .ok();
    match (target, token) {
        (Some(target), Some(token)) if problems.is_empty() => Ok(Publish {
            volume_id: volume_id.to_owned(),
            target,
            secrets,
            uid,
            gid,
            mode,
            binding,
            token,
        }),
        _ => Err(problems),
    }
}

/// The pod's token for `audience`, from the kubelet's attribute; the error never holds it.
fn pod_token(
    attributes: &std::collections::HashMap<String, String>,
    audience: &str,
) -> Result<Zeroizing<String>, String> {
    /// Every token of the attribute lands in zeroized memory, kept or not.
    struct Wiped(Zeroizing<String>);
    impl<'de> serde::Deserialize<'de> for Wiped {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            String::deserialize(d).map(|s| Wiped(Zeroizing::new(s)))
        }
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        token: Wiped,
    }
    let Some(text) = attributes.get(TOKENS) else {
        return Err(format!(
            "the pod's token is missing: the CSIDriver object must request one for the audience \
             {audience:?} (spec.tokenRequests) and set spec.requiresRepublish"
        ));
    };
    let mut tokens: std::collections::HashMap<String, Entry> = serde_json::from_str(text)
        .map_err(|_| format!("{TOKENS} is not the kubelet's JSON object of tokens by audience"))?;
    match tokens.remove(audience) {
        Some(entry) if !entry.token.0.is_empty() => Ok(entry.token.0),
        _ => {
            let mut known: Vec<String> = tokens.into_keys().collect();
            known.sort();
            Err(format!(
                "the pod's tokens hold none for the audience {audience:?} (they are for {}): add \
                 it to the CSIDriver's spec.tokenRequests",
                if known.is_empty() {
                    "no audience".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CANARY: &str = "eyJ.canary-pod-token.sig";

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tokens(audience: &str) -> String {
        serde_json::json!({ audience: { "token": CANARY, "expirationTimestamp": "2026-12-07T11:00:00Z" } })
            .to_string()
    }

    #[test]
    fn a_good_request_is_read_whole() {
        let t = tokens("https://secrets.example.com");
        let p = check(
            "csi-1",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/s/mount",
            &attrs(&[
                ("secrets", "HF_TOKEN, OPENAI_API_KEY,HF_TOKEN"),
                ("uid", "1000"),
                ("mode", "0440"),
                ("binding", "ml-jobs"),
                (TOKENS, &t),
            ]),
            Path::new("/var/lib/kubelet"),
            "https://secrets.example.com",
        )
        .unwrap();
        assert_eq!(p.secrets.len(), 2);
        assert_eq!((p.uid, p.gid, p.mode), (Some(1000), None, Some(0o440)));
        assert_eq!(p.token.as_str(), CANARY);
        assert!(!format!("{p:?}").contains("canary"));
    }

    #[test]
    fn every_problem_is_named_at_once_and_the_token_never() {
        let t = tokens("other-audience");
        let problems = check(
            "",
            "/etc/../root",
            &attrs(&[
                ("secrets", "9bad"),
                ("uid", "x"),
                ("mode", "0666"),
                (TOKENS, &t),
            ]),
            Path::new("/var/lib/kubelet"),
            "https://secrets.example.com",
        )
        .unwrap_err();
        let all = problems.join("\n");
        for word in [
            "volume_id",
            "target_path",
            "secrets",
            "uid",
            "mode",
            "audience",
        ] {
            assert!(all.contains(word), "{word} missing from:\n{all}");
        }
        assert_eq!(problems.len(), 6, "{all}");
        assert!(!all.contains("canary"), "{all}");
    }

    #[test]
    fn a_target_path_stays_under_the_kubelet_directory() {
        let k = Path::new("/var/lib/kubelet");
        assert!(target_under("/var/lib/kubelet/pods/a/volumes/v/mount", k).is_ok());
        for bad in [
            "/var/lib/kubelet",
            "/var/lib/kubelet-other/pods",
            "/var/lib/kubelet/pods/../../../etc",
            "/etc/secrets",
            "var/lib/kubelet/pods/a",
            "",
        ] {
            assert!(target_under(bad, k).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_or_unreadable_token_attribute_says_what_to_set() {
        let no = check(
            "v",
            "/var/lib/kubelet/p",
            &attrs(&[("secrets", "A")]),
            Path::new("/var/lib/kubelet"),
            "aud",
        )
        .unwrap_err();
        assert!(no[0].contains("tokenRequests"), "{no:?}");
        let bad = check(
            "v",
            "/var/lib/kubelet/p",
            &attrs(&[("secrets", "A"), (TOKENS, "not json canary")]),
            Path::new("/var/lib/kubelet"),
            "aud",
        )
        .unwrap_err();
        assert!(
            bad[0].contains(TOKENS) && !bad[0].contains("canary"),
            "{bad:?}"
        );
    }
}
