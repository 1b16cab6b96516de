//! Brokered credentials (`[broker."NAME"]`, `--broker SECRET`): what a broker forwards to, the
//! header it adds, and the variables that send the workload's client to it. Pure: no IO; the
//! running proxy is `proxy`.
//!
//! The workload gets a loopback base URL (with a per-run unguessable path prefix) and a
//! placeholder where its client expects a key; the launcher adds the real credential on the way
//! to the upstream, so the value is never in the workload's environment, files or memory.
//! A kind's defaults are what its official client reads (checked with the client in
//! `tests/it/broker.rs`): the `openai` SDK reads `OPENAI_BASE_URL` and `OPENAI_API_KEY`,
//! `huggingface_hub` reads `HF_ENDPOINT` and `HF_TOKEN`, git reads `url.<base>.insteadOf`
//! from `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`.

use std::path::PathBuf;

use crate::secret::{SecretKind, SecretName};

/// A broker as planned from the spec or a flag, before the source says the secret's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPlan {
    /// `[broker."NAME"]`, or the secret's name for `--broker SECRET`.
    pub name: String,
    pub secret: SecretName,
    pub upstream: Option<url::Url>,
    pub header: Option<HeaderTemplate>,
    pub url_env: Option<String>,
    pub key_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// On a Unix socket, whose path goes in this variable; `None`: on a loopback port.
    pub socket_env: Option<String>,
}

/// The variable a socket broker's path goes in when the spec names none: `NAME_SOCKET`, the
/// name upper-cased, what a variable cannot hold as `_`.
pub fn default_socket_env(name: &str) -> String {
    let mut v: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if v.starts_with(|c: char| c.is_ascii_digit()) {
        v.insert(0, '_');
    }
    v.push_str("_SOCKET");
    v
}

/// How the credential header is made from the value: `Name: before{}after`, where `{}` is the
/// value, or `{basic:USER}` is `base64(USER:value)` (HTTP Basic, as GitHub's git endpoint
/// takes a token: `Authorization: Basic {basic:x-access-token}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    /// Lower case, as HTTP/1.1 headers compare.
    pub name: String,
    pub before: String,
    pub basic_user: Option<String>,
    pub after: String,
}

/// Headers a broker never takes as its credential's: the connection's own, and what decides
/// where a request goes.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

impl HeaderTemplate {
    /// Parses `Name: format`, the format holding `{}` or `{basic:USER}` once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shape = "give it as \"Name: format\" with {} where the value goes (\"Authorization: \
                     Bearer {}\", \"x-api-key: {}\", \"Authorization: Basic {basic:USER}\")";
        let Some((name, format)) = text.split_once(':') else {
            // Not echoed: without its ':', the text may well be a pasted credential.
            return Err(format!("a header has no ':'; {shape}"));
        };
        let name = name.trim();
        let format = format.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!(
                "header name {name:?} is not an HTTP header name (letters, digits and \
                 !#$%&'*+-.^_`|~); {shape}"
            ));
        }
        let name = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "header {name:?} belongs to the connection, not to a credential; name the \
                 header the API reads its key from"
            ));
        }
        if format.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!(
                "the format of header {name:?} holds a control character"
            ));
        }
        let (before, rest, basic_user) = if let Some((before, rest)) = format.split_once("{}") {
            (before, rest, None)
        } else if let Some((before, rest)) = format.split_once("{basic:") {
            let Some((user, after)) = rest.split_once('}') else {
                return Err(format!(
                    "header {name:?}: {{basic:USER}} is not closed; {shape}"
                ));
            };
            if user.is_empty() || user.contains(':') {
                return Err(format!(
                    "header {name:?}: {{basic:USER}} needs a user name without ':'"
                ));
            }
            (before, after, Some(user.to_owned()))
        } else {
            return Err(format!(
                "header {name:?} has no {{}} for the value; {shape}"
            ));
        };
        if rest.contains("{}") || rest.contains("{basic:") {
            return Err(format!(
                "header {name:?} names the value twice; give {{}} once"
            ));
        }
        Ok(HeaderTemplate {
            name,
            before: before.to_owned(),
            basic_user,
            after: rest.to_owned(),
        })
    }

    /// The header's value for `secret`, in a buffer wiped when dropped.
    pub fn value(&self, secret: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
        use base64::Engine;
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(
            self.before.len() + self.after.len() + secret.len() * 2 + 64,
        ));
        out.extend_from_slice(self.before.as_bytes());
        match &self.basic_user {
            None => out.extend_from_slice(secret),
            Some(user) => {
                let mut pair =
                    zeroize::Zeroizing::new(Vec::with_capacity(user.len() + 1 + secret.len()));
                pair.extend_from_slice(user.as_bytes());
                pair.push(b':');
                pair.extend_from_slice(secret);
                let encoded = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(pair.as_slice()),
                );
                out.extend_from_slice(encoded.as_bytes());
            }
        }
        out.extend_from_slice(self.after.as_bytes());
        out
    }

    /// As written in a spec (`Authorization: Bearer {}`).
    pub fn shown(&self) -> String {
        let slot = match &self.basic_user {
            None => "{}".to_owned(),
            Some(u) => format!("{{basic:{u}}}"),
        };
        format!("{}: {}{slot}{}", self.name, self.before, self.after)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks an upstream URL: `https` (the credential never crosses a network in the clear), a
/// host, nothing a URL would carry besides (a user, a query, a fragment).
pub fn parse_upstream(text: &str) -> Result<url::Url, String> {
    // The text is not echoed: a user, a password or a query may hold a credential (url's
    // errors do not quote their input).
    let url = url::Url::parse(text)
        .map_err(|e| format!("an upstream is not a URL ({e}); give \"https://host/path\""))?;
    // What the errors show of it: scheme, host and path.
    let path = if url.path() == "/" { "" } else { url.path() };
    let shown = format!("{}://{}{path}", url.scheme(), url.host_str().unwrap_or(""));
    if url.scheme() != "https" {
        return Err(format!(
            "upstream {shown:?} is not https: the broker sends the credential over TLS only"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("upstream {shown:?} names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "upstream {shown:?} holds a user or password; the credential comes from the secret"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "upstream {shown:?} has a query or fragment; give the base URL only"
        ));
    }
    Ok(url)
}

/// One listener of a broker: what it forwards to and how it sets the workload up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The broker's name (`NAME`, or `NAME/api` for the second listener of a `github` one).
    pub name: String,
    pub secret: SecretName,
    pub upstream: url::Url,
    pub header: HeaderTemplate,
    /// Gets the broker's base URL.
    pub url_env: Option<String>,
    /// Gets the placeholder.
    pub key_env: Option<String>,
    /// git's `url.<broker>.insteadOf` this prefix (`https://github.com/`).
    pub git_instead_of: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// On a Unix socket, whose path goes in this variable.
    pub socket_env: Option<String>,
}

/// What a kind's broker does when the spec does not say.
struct Defaults {
    upstream: &'static str,
    header: &'static str,
    url_env: Option<&'static str>,
    key_env: Option<&'static str>,
    git_instead_of: Option<&'static str>,
}

fn defaults(kind: SecretKind) -> Option<Vec<Defaults>> {
    Some(match kind {
        SecretKind::Openai => vec![Defaults {
            upstream: "https://api.openai.com/v1",
            header: "Authorization: Bearer {}",
            url_env: Some("OPENAI_BASE_URL"),
            key_env: Some("OPENAI_API_KEY"),
            git_instead_of: None,
        }],
        SecretKind::Huggingface => vec![Defaults {
            upstream: "https://huggingface.co",
            header: "Authorization: Bearer {}",
            url_env: Some("HF_ENDPOINT"),
            key_env: Some("HF_TOKEN"),
            git_instead_of: None,
        }],
        // git over HTTPS takes a token as Basic credentials; the REST API as a bearer token.
        // gh has no setting for a plain-HTTP API base (GH_HOST is a host it reaches over
        // https): GITHUB_API_URL is what Octokit in GitHub Actions reads.
        SecretKind::Github => vec![
            Defaults {
                upstream: "https://github.com",
                header: "Authorization: Basic {basic:x-access-token}",
                url_env: None,
                key_env: None,
                git_instead_of: Some("https://github.com/"),
            },
            Defaults {
                upstream: "https://api.github.com",
                header: "Authorization: Bearer {}",
                url_env: Some("GITHUB_API_URL"),
                key_env: Some("GH_TOKEN"),
                git_instead_of: None,
            },
        ],
        // datadogpy reads DATADOG_HOST as its API base; the Agent reads DD_DD_URL (set by
        // url_env when wanted). The newer datadog-api-client builds https://api.{DD_SITE}
        // and has no base-URL variable (README).
        SecretKind::Datadog => vec![Defaults {
            upstream: "https://api.datadoghq.com",
            header: "DD-API-KEY: {}",
            url_env: Some("DATADOG_HOST"),
            key_env: Some("DD_API_KEY"),
            git_instead_of: None,
        }],
        SecretKind::Custom | SecretKind::SshPublicKey | SecretKind::Ngc => return None,
    })
}

/// The broker's listeners, its kind's defaults under what the plan says (`kind` is `None` for
/// a directory source, which has no kinds: the plan must then say everything).
pub fn complete(plan: &BrokerPlan, kind: Option<SecretKind>) -> Result<Vec<Route>, String> {
    let given = |d: &Defaults, second: bool| -> Result<Route, String> {
        // The plan's settings are the first listener's; a second one keeps its defaults.
        let mine = !second;
        Ok(Route {
            name: if second {
                format!("{}/api", plan.name)
            } else {
                plan.name.clone()
            },
            secret: plan.secret.clone(),
            upstream: match plan.upstream.as_ref().filter(|_| mine) {
                Some(u) => u.clone(),
                None => parse_upstream(d.upstream)?,
            },
            header: match plan.header.as_ref().filter(|_| mine) {
                Some(h) => h.clone(),
                None => HeaderTemplate::parse(d.header)?,
            },
            url_env: plan
                .url_env
                .clone()
                .filter(|_| mine)
                .or(d.url_env.map(str::to_owned)),
            key_env: plan
                .key_env
                .clone()
                .filter(|_| mine)
                .or(d.key_env.map(str::to_owned)),
            git_instead_of: d.git_instead_of.map(str::to_owned),
            ca_file: plan.ca_file.clone(),
            socket_env: plan.socket_env.clone().filter(|_| mine),
        })
    };
    match kind.and_then(defaults) {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, d)| given(d, i > 0))
            .collect(),
        None => {
            let what = match kind {
                Some(k) => format!("secret \"{}\" is of kind {}", plan.secret, k.as_str()),
                None => format!(
                    "secret \"{}\" comes from a directory, which has no kinds",
                    plan.secret
                ),
            };
            let (Some(upstream), Some(url_env)) = (&plan.upstream, &plan.url_env) else {
                return Err(format!(
                    "broker \"{}\": {what}, for which the broker knows no API: give upstream = \
                     \"https://...\" and url_env = \"VAR\" (and header = \"Name: format {{}}\" \
                     unless it is Authorization: Bearer, and key_env for the placeholder)",
                    plan.name
                ));
            };
            Ok(vec![Route {
                name: plan.name.clone(),
                secret: plan.secret.clone(),
                upstream: upstream.clone(),
                header: match &plan.header {
                    Some(h) => h.clone(),
                    None => HeaderTemplate::parse("Authorization: Bearer {}")?,
                },
                url_env: Some(url_env.clone()),
                key_env: plan.key_env.clone(),
                git_instead_of: None,
                ca_file: plan.ca_file.clone(),
                socket_env: plan.socket_env.clone(),
            }])
        }
    }
}

/// Where a listener is: its base URL (`http://127.0.0.1:PORT/PREFIX`, or `http://localhost/PREFIX`
/// on a Unix socket), the socket's path if it is on one, and the placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub base: String,
    pub socket: Option<String>,
    pub placeholder: String,
}

/// The variables the workload gets for `routes` (listening at `addresses`, in order), given
/// the variables it would otherwise have (`existing`: name and value, for git's count and the
/// proxy bypass lists, which are added to, not replaced).
pub fn variables(
    routes: &[Route],
    addresses: &[Address],
    existing: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut git = Vec::new();
    for (route, addr) in routes.iter().zip(addresses) {
        if let Some(v) = &route.url_env {
            out.push((v.clone(), addr.base.clone()));
        }
        if let Some(v) = &route.key_env {
            out.push((v.clone(), addr.placeholder.clone()));
        }
        if let (Some(v), Some(path)) = (&route.socket_env, &addr.socket) {
            out.push((v.clone(), path.clone()));
        }
        if let Some(prefix) = &route.git_instead_of {
            git.push((format!("url.{}/.insteadOf", addr.base), prefix.clone()));
        }
    }
    if !git.is_empty() {
        let first: usize = existing("GIT_CONFIG_COUNT")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        for (i, (key, value)) in git.iter().enumerate() {
            out.push((format!("GIT_CONFIG_KEY_{}", first + i), key.clone()));
            out.push((format!("GIT_CONFIG_VALUE_{}", first + i), value.clone()));
        }
        out.push(("GIT_CONFIG_COUNT".into(), (first + git.len()).to_string()));
    }
    // The workload's calls to the broker never go through a proxy.
    if !routes.is_empty() {
        for var in ["NO_PROXY", "no_proxy"] {
            let list = match existing(var).filter(|v| !v.trim().is_empty()) {
                Some(v) => format!("{v},127.0.0.1,localhost"),
                None => "127.0.0.1,localhost".to_owned(),
            };
            out.push((var.to_owned(), list));
        }
    }
    out
}

/// The brokers as `--dry-run` prints them: upstream, header and variables (the address and
/// placeholder are drawn at start).
pub fn render(routes: &[Route]) -> String {
    let mut out = String::new();
    for r in routes {
        out.push_str(&format!(
            "broker {}: secret {} forwarded to {} with {}\n",
            r.name,
            r.secret,
            r.upstream,
            r.header.shown()
        ));
        if let Some(v) = &r.url_env {
            out.push_str(&format!(
                "{v}=<broker {}: {}/PREFIX>  # broker\n",
                r.name,
                if r.socket_env.is_some() {
                    "http://localhost"
                } else {
                    "http://127.0.0.1:PORT"
                }
            ));
        }
        if let Some(v) = &r.key_env {
            out.push_str(&format!(
                "{v}=<placeholder of broker {}>  # broker\n",
                r.name
            ));
        }
        if let Some(v) = &r.socket_env {
            out.push_str(&format!(
                "{v}=<the Unix socket of broker {}>  # broker\n",
                r.name
            ));
        }
        if let Some(prefix) = &r.git_instead_of {
            out.push_str(&format!(
                "git: url.<broker {}>.insteadOf {prefix}  # broker, through GIT_CONFIG_COUNT\n",
                r.name
            ));
        }
    }
    if !routes.is_empty() {
        out.push_str("NO_PROXY, no_proxy: 127.0.0.1,localhost added  # broker\n");
    }
    out
}

/// Every variable name a broker of `routes` sets, for the checks against the plan's own.
pub fn names_set(routes: &[Route]) -> Vec<String> {
    let placeholder = Address {
        base: String::new(),
        socket: Some(String::new()),
        placeholder: String::new(),
    };
    let addresses = vec![placeholder; routes.len()];
    variables(routes, &addresses, &|_| None)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !matches!(n.as_str(), "NO_PROXY" | "no_proxy") && !n.starts_with("GIT_CONFIG_"))
        .collect()
}

#[cfg(test)]
mod tests;
