//! Which source a consumer reads, and with which credential: one rule for the mount, the
//! launcher, `secretfs-run` and the management CLI. Pure: the callers gather what was given
//! (flags, a spec's `[source]`, the environment, `login`'s file) and this decides.
//!
//! The rule, in order:
//!
//! - **Levels**: flags first, then the job spec's `[source]` (the launcher's), then the
//!   environment, then `secretfs login`'s file (the management CLI's); the first level that
//!   names a source decides it. A level that names two sources (`SECRETFS_STORE` and
//!   `SECRETFS_URL`, `--dir` and `--url`) is refused, naming both: two places to look is a
//!   mistake to show, not a choice to guess.
//! - **Nothing named**: each consumer's default (the launcher: the directory `/run/secrets`;
//!   the mount and the management CLI: the local store).
//! - **A server's credential**: the first level that gives one, in the same order; a level
//!   that gives two (`SECRETFS_TOKEN` and `SECRETFS_TOKEN_FILE`, `--token-file` and
//!   `--identity-token-file`) is refused, naming both.
//! - **The rest** (a key file, a CA file, an identity binding): the first level that gives it.

use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Token;

/// A value and how it was given (`--url`, `SECRETFS_URL`, `[source] url`), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<T> {
    pub value: T,
    pub by: String,
}

impl<T> Named<T> {
    pub fn new(value: T, by: impl Into<String>) -> Self {
        Named {
            value,
            by: by.into(),
        }
    }
}

/// What one level gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub dir: Option<Named<PathBuf>>,
    pub store: Option<Named<PathBuf>>,
    pub url: Option<Named<String>>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// A token given as a value (`SECRETFS_TOKEN`, the saved login).
    pub token: Option<Named<Token>>,
    pub token_file: Option<Named<PathBuf>>,
    pub identity_file: Option<Named<PathBuf>>,
    pub identity_binding: Option<String>,
}

impl Given {
    fn sources(&self) -> Vec<&str> {
        let mut by = Vec::new();
        if let Some(d) = &self.dir {
            by.push(d.by.as_str());
        }
        if let Some(s) = &self.store {
            by.push(s.by.as_str());
        }
        if let Some(u) = &self.url {
            by.push(u.by.as_str());
        }
        by
    }

    fn credentials(&self) -> Vec<&str> {
        let mut by = Vec::new();
        if let Some(t) = &self.token {
            by.push(t.by.as_str());
        }
        if let Some(f) = &self.token_file {
            by.push(f.by.as_str());
        }
        if let Some(f) = &self.identity_file {
            by.push(f.by.as_str());
        }
        by
    }
}

/// How a server source proves itself, as given (the file is read when the source opens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSpec {
    Token(Token),
    TokenFile(PathBuf),
    /// A platform's signed token in a file, exchanged for a workload token.
    Identity {
        file: PathBuf,
        binding: Option<String>,
    },
}

impl CredentialSpec {
    /// What it is, for `--dry-run` and messages (never the token).
    pub fn describe(&self) -> String {
        match self {
            CredentialSpec::Token(_) => "a token from the environment or login".into(),
            CredentialSpec::TokenFile(p) => format!("the token file {}", p.display()),
            CredentialSpec::Identity { file, .. } => {
                format!("the identity token file {}", file.display())
            }
        }
    }
}

/// Where secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A directory of secret files (a mount, a Kubernetes or Docker secret volume), waited for
    /// up to `wait` to hold every named secret.
    Dir {
        path: PathBuf,
        wait: Option<Duration>,
    },
    /// The local store (`None`: its default path).
    Store {
        path: Option<PathBuf>,
        key_file: Option<PathBuf>,
    },
    Server {
        urls: String,
        credential: CredentialSpec,
        ca_file: Option<PathBuf>,
    },
}

/// What a consumer reads when no level names a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    Dir(PathBuf),
    Store,
}

/// What the environment gives (`env`: the process's, as data; relative paths from `cwd`):
/// `SECRETFS_STORE`, `SECRETFS_URL` and, for the launcher (`with_dir`), `SECRETFS_DIR` name a
/// source; `SECRETFS_TOKEN`, `SECRETFS_TOKEN_FILE` and `SECRETFS_IDENTITY_TOKEN_FILE` a
/// credential; `SECRETFS_KEY_FILE`, `SECRETFS_CA_FILE` and `SECRETFS_IDENTITY_BINDING` the rest.
/// An empty variable is not set.
pub fn from_environment(
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    cwd: &std::path::Path,
    with_dir: bool,
) -> Given {
    let get = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v)
    };
    let path = |name: &str| get(name).map(|v| cwd.join(v));
    let named_path = |name: &str| path(name).map(|p| Named::new(p, name));
    Given {
        dir: if with_dir {
            named_path("SECRETFS_DIR")
        } else {
            None
        },
        store: named_path("SECRETFS_STORE"),
        url: get("SECRETFS_URL")
            .map(|u| Named::new(u.to_string_lossy().trim().to_owned(), "SECRETFS_URL")),
        key_file: path("SECRETFS_KEY_FILE"),
        ca_file: path("SECRETFS_CA_FILE"),
        token: get("SECRETFS_TOKEN").map(|t| {
            Named::new(
                Token::from_string(t.to_string_lossy().trim().to_owned()),
                "SECRETFS_TOKEN",
            )
        }),
        token_file: named_path("SECRETFS_TOKEN_FILE"),
        identity_file: named_path("SECRETFS_IDENTITY_TOKEN_FILE"),
        identity_binding: get("SECRETFS_IDENTITY_BINDING")
            .map(|b| b.to_string_lossy().into_owned()),
    }
}

/// "`a` and `b`", "`a`, `b` and `c`".
fn both(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The source `levels` (in order of precedence) name, or `fallback`; every problem at once.
pub fn choose(levels: &[&Given], fallback: Fallback) -> Result<SourceSpec, Vec<String>> {
    let mut problems = Vec::new();
    let mut chosen: Option<&Given> = None;
    for level in levels {
        let named = level.sources();
        if named.len() > 1 {
            problems.push(format!(
                "{} each name a source (a directory, the local store or a server); give one",
                both(&named)
            ));
            break;
        }
        if !named.is_empty() {
            chosen = Some(level);
            break;
        }
    }
    let first = |f: fn(&Given) -> Option<&PathBuf>| levels.iter().find_map(|l| f(l).cloned());
    let key_file = first(|l| l.key_file.as_ref());
    let ca_file = first(|l| l.ca_file.as_ref());
    let spec = match chosen {
        Some(Given { dir: Some(d), .. }) => SourceSpec::Dir {
            path: d.value.clone(),
            wait: None,
        },
        Some(Given { store: Some(s), .. }) => SourceSpec::Store {
            path: Some(s.value.clone()),
            key_file,
        },
        Some(Given { url: Some(u), .. }) => match credential(levels) {
            Ok(credential) => SourceSpec::Server {
                urls: u.value.clone(),
                credential,
                ca_file,
            },
            Err(e) => {
                problems.push(e);
                return Err(problems);
            }
        },
        _ => match fallback {
            Fallback::Dir(path) => SourceSpec::Dir { path, wait: None },
            Fallback::Store => SourceSpec::Store {
                path: None,
                key_file,
            },
        },
    };
    // A credential given outright (not by the environment, which is ambient) for a source
    // that takes none is a mistake worth naming.
    if !matches!(spec, SourceSpec::Server { .. })
        && let Some(first) = levels.first()
        && let Some(by) = first.credentials().first()
    {
        problems.push(format!(
            "{by} is a credential for a server, but the source is {}; give --url (or \
             SECRETFS_URL), or leave it out",
            match &spec {
                SourceSpec::Dir { path, .. } => format!("the directory {}", path.display()),
                _ => "the local store".into(),
            }
        ));
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

/// The server's credential: from the first level that gives one.
pub fn credential(levels: &[&Given]) -> Result<CredentialSpec, String> {
    let binding = levels.iter().find_map(|l| l.identity_binding.clone());
    for level in levels {
        let named = level.credentials();
        if named.len() > 1 {
            return Err(format!(
                "{} are two credentials for the server; give one (a workload token, a token \
                 file or an identity token file)",
                both(&named)
            ));
        }
        if let Some(t) = &level.token {
            return Ok(CredentialSpec::Token(t.value.clone()));
        }
        if let Some(f) = &level.token_file {
            return Ok(CredentialSpec::TokenFile(f.value.clone()));
        }
        if let Some(f) = &level.identity_file {
            return Ok(CredentialSpec::Identity {
                file: f.value.clone(),
                binding,
            });
        }
    }
    Err(
        "no credential for the server: give --token-file or --identity-token-file (spec: \
         token_file or identity_token_file), or set SECRETFS_TOKEN_FILE, SECRETFS_TOKEN or \
         SECRETFS_IDENTITY_TOKEN_FILE"
            .into(),
    )
}

/// What in `env` (the environment's level) the management commands take before a saved login
/// to `url`, one sentence each: a login made while `SECRETFS_STORE` is set is not used until it
/// is unset, and a reader who followed a walk-through that exported it cannot tell.
pub fn shadowing_login(env: &Given, url: &str) -> Vec<String> {
    let mut said = Vec::new();
    if let Some(s) = &env.store {
        said.push(format!(
            "{} is set: commands use the local store {} rather than this login until it is unset",
            s.by,
            s.value.display()
        ));
    }
    if let Some(u) = env.url.as_ref().filter(|u| u.value != url) {
        said.push(format!(
            "{} is set: commands use the server {} rather than this login until it is unset",
            u.by, u.value
        ));
    }
    for by in env.credentials() {
        said.push(format!(
            "{by} is set: commands present it rather than this login's token until it is unset"
        ));
    }
    said
}

#[cfg(test)]
mod tests;
