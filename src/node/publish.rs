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
    /// The `files` attribute as given (kept to mount the volume again), and its files.
    pub files_text: Option<String>,
    pub files: Vec<crate::render::RenderedFile>,
    /// The pod whose volume this is: its uid, as the target path, the kubelet's pod info and
    /// the token's claims all say.
    pub pod: String,
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
    let files_text = attributes
        .get("files")
        .filter(|t| !t.trim().is_empty())
        .cloned();
    let files = match &files_text {
        Some(text) => files(text)
            .map_err(|e| problems.extend(e))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let token = pod_token(attributes, audience)
        .map_err(|e| problems.push(e))
        .ok();
    let pod = match (&target, &token) {
        (Some(target), Some(token)) => pod_of(target, kubelet_dir, attributes, token)
            .map_err(|e| problems.push(e))
            .ok(),
        _ => None,
    };
    match (target, token, pod) {
        (Some(target), Some(token), Some(pod)) if problems.is_empty() => Ok(Publish {
            volume_id: volume_id.to_owned(),
            target,
            secrets,
            uid,
            gid,
            mode,
            binding,
            files_text,
            files,
            pod,
            token,
        }),
        _ => Err(problems),
    }
}

/// The `files` attribute: the `[files."NAME"]` tables of `mount --files`, each template inline
/// (`text = "..."`: the node's own files are not a volume's to read); every problem at once.
pub fn files(text: &str) -> Result<Vec<crate::render::RenderedFile>, Vec<String>> {
    let spec: crate::render::FilesSpec = toml::from_str(text).map_err(|e| {
        vec![format!(
            "volumeAttributes.files is not a valid files spec: {e}"
        )]
    })?;
    let mut problems = Vec::new();
    for (name, entry) in &spec.files {
        if entry.template.is_some() {
            problems.push(format!(
                "volumeAttributes.files: [files.{name:?}]: a volume's template is given inline                  (text = \"...\"), never read from a path on the node"
            ));
        }
        if entry.env.is_some() {
            problems.push(format!(
                "volumeAttributes.files: [files.{name:?}]: env = is the launcher's; a volume                  serves each file at its NAME: remove it"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let (files, more) = crate::render::load_each(&spec.files, Path::new("/"), |_| {
        Err(std::io::Error::other("no template is read from the node"))
    });
    let more: Vec<String> = more
        .into_iter()
        .map(|p| format!("volumeAttributes.files: {p}"))
        .collect();
    if more.is_empty() {
        Ok(files)
    } else {
        Err(more)
    }
}

/// The kubelet's pod info attribute (`podInfoOnMount`) naming the pod's uid.
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";

/// The pod a volume belongs to, where every witness agrees: the target path
/// (`<kubelet>/pods/<uid>/volumes/...`), the kubelet's pod info, and the pod token's own claim
/// (`kubernetes.io.pod.uid`, which the server's exchange verifies with the signature). A token
/// of pod A presented for pod B's path is refused here, before any exchange.
fn pod_of(
    target: &Path,
    kubelet_dir: &Path,
    attributes: &std::collections::HashMap<String, String>,
    token: &str,
) -> Result<String, String> {
    let rest = target.strip_prefix(kubelet_dir).unwrap_or(target);
    let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
    let path_pod = match parts.as_slice() {
        ["pods", uid, "volumes", _, _, ..] => *uid,
        _ => {
            return Err(format!(
                "target_path {} is not a pod volume's path ({}/pods/<pod uid>/volumes/...)",
                target.display(),
                kubelet_dir.display()
            ));
        }
    };
    if let Some(said) = attributes.get(POD_UID)
        && said != path_pod
    {
        return Err(format!(
            "the kubelet's pod info names pod {said:?}, and target_path is pod {path_pod:?}'s"
        ));
    }
    #[derive(serde::Deserialize)]
    struct Claims {
        #[serde(rename = "kubernetes.io")]
        kubernetes: Option<Kubernetes>,
    }
    #[derive(serde::Deserialize)]
    struct Kubernetes {
        pod: Option<Pod>,
    }
    #[derive(serde::Deserialize)]
    struct Pod {
        uid: String,
    }
    // Read without verifying: the server verifies the signature at the exchange, and refuses a
    // forged token there; this only ties a genuine token to its own pod's path.
    let claimed = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token)
        .ok()
        .and_then(|c| c.kubernetes?.pod)
        .map(|p| p.uid);
    match claimed {
        Some(uid) if uid == path_pod => Ok(uid),
        Some(uid) => Err(format!(
            "the pod's token is pod {uid:?}'s, and target_path is pod {path_pod:?}'s: a token              opens only its own pod's volumes"
        )),
        None => Err(
            "the pod's token names no pod (no kubernetes.io.pod.uid claim): the kubelet's              service-account token for the CSIDriver's tokenRequests is bound to its pod"
                .to_owned(),
        ),
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

    const CANARY: &str = "canary-pod-token-signature";

    /// A JWT-shaped pod token of pod `uid` (unsigned: only its claims are read here).
    fn pod_token(uid: &str) -> String {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.{CANARY}",
            b64(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
            b64(
                serde_json::json!({"sub": "system:serviceaccount:ml:trainer",
                "kubernetes.io": {"namespace": "ml", "pod": {"name": "p", "uid": uid}}})
            ),
        )
    }

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tokens(audience: &str) -> String {
        tokens_of(audience, "u")
    }

    fn tokens_of(audience: &str, pod: &str) -> String {
        serde_json::json!({ audience: { "token": pod_token(pod), "expirationTimestamp": "2026-12-07T11:00:00Z" } })
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
        assert_eq!(p.pod, "u");
        assert!(p.token.ends_with(CANARY));
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
    fn a_token_opens_only_its_own_pods_volumes() {
        let k = Path::new("/var/lib/kubelet");
        let aud = "https://secrets.example.com";
        let of_a = tokens_of(aud, "pod-a");
        let path_of =
            |pod: &str| format!("/var/lib/kubelet/pods/{pod}/volumes/kubernetes.io~csi/s/mount");
        let ok = check(
            "v",
            &path_of("pod-a"),
            &attrs(&[("secrets", "A"), (TOKENS, &of_a), (POD_UID, "pod-a")]),
            k,
            aud,
        );
        assert_eq!(ok.unwrap().pod, "pod-a");
        // Pod A's token at pod B's path, with or without the kubelet's pod info.
        for extra in [None, Some("pod-b")] {
            let mut a = attrs(&[("secrets", "A"), (TOKENS, &of_a)]);
            if let Some(uid) = extra {
                a.insert(POD_UID.into(), uid.into());
            }
            let problems = check("v", &path_of("pod-b"), &a, k, aud)
                .unwrap_err()
                .join("\n");
            assert!(problems.contains("its own pod's volumes"), "{problems}");
            assert!(!problems.contains(CANARY), "{problems}");
        }
        // Pod info that disagrees with the path.
        let problems = check(
            "v",
            &path_of("pod-a"),
            &attrs(&[("secrets", "A"), (TOKENS, &of_a), (POD_UID, "pod-b")]),
            k,
            aud,
        )
        .unwrap_err();
        assert!(problems[0].contains("pod info"), "{problems:?}");
        // A path that is not a pod's volume, a token without a pod.
        let problems = check(
            "v",
            "/var/lib/kubelet/plugins/x",
            &attrs(&[("secrets", "A"), (TOKENS, &of_a)]),
            k,
            aud,
        )
        .unwrap_err();
        assert!(
            problems[0].contains("not a pod volume's path"),
            "{problems:?}"
        );
        let bare = serde_json::json!({ aud: { "token": format!("a.b.{CANARY}") } }).to_string();
        let problems = check(
            "v",
            &path_of("pod-a"),
            &attrs(&[("secrets", "A"), (TOKENS, &bare)]),
            k,
            aud,
        )
        .unwrap_err();
        assert!(
            problems[0].contains("names no pod") && !problems[0].contains(CANARY),
            "{problems:?}"
        );
    }

    #[test]
    fn a_volumes_files_take_inline_templates_only() {
        let ok = files("[files.\"hf.json\"]\ntext = '{\"t\": {{ secret \"HF_TOKEN\" | json }}}'\n")
            .unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].name, "hf.json");
        let problems = files(
            "[files.a]\ntemplate = \"/etc/shadow\"\n[files.b]\nbuiltin = \"git-credentials\"\nenv = \"X\"\n",
        )
        .unwrap_err();
        let all = problems.join("\n");
        assert!(
            all.contains("[files.\"a\"]: a volume's template is given inline"),
            "{all}"
        );
        assert!(
            all.contains("[files.\"b\"]: env = is the launcher's"),
            "{all}"
        );
        assert_eq!(problems.len(), 2, "{all}");
        let bad = files("[files.c]\ntext = \"{{ nope }}\"\n").unwrap_err();
        assert!(bad[0].contains("[files.\"c\"]"), "{bad:?}");
        assert!(files("not toml [").unwrap_err()[0].contains("not a valid files spec"));
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
