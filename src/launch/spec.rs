//! The job spec: a TOML file (unknown keys are errors, with their line), and the Lepton job JSON
//! that `lep job create` sends. Pure: parsing only, no IO.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// A job spec as written in TOML.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The workload's argv; optional when a command follows `--`.
    pub command: Option<Vec<String>>,
    pub workdir: Option<PathBuf>,
    pub inherit_env: Option<InheritEnv>,
    /// Plain values: `NAME = "value"`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `ENV_VAR = "SECRET_NAME"`: the variable holds the secret's value.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// `ENV_VAR = "SECRET_NAME"`: the variable holds the path of a file with the value.
    #[serde(default)]
    pub secret_files: BTreeMap<String, String>,
    #[serde(default)]
    pub source: SourceSpec,
    /// Variables that may hold a secret although the loader, libc, a shell or an interpreter
    /// reads them as a path or as code (see `plan::UNSAFE_ENV`); for whoever really means it.
    #[serde(default)]
    pub allow_unsafe_env: Vec<String>,
    /// Supervision (`secretfs run --watch`): present means on.
    pub watch: Option<super::watch::WatchSpec>,
    /// `secretfs run --mask`.
    #[serde(default)]
    pub mask: bool,
    /// Rendered files (`[files."NAME"]`: a built-in or a template, and the variable that gets
    /// the memory file's path).
    #[serde(default)]
    pub files: BTreeMap<String, crate::render::FileEntry>,
    /// Brokered credentials (`[broker."NAME"]`): the workload calls its API through the
    /// launcher, which adds the credential; the value never reaches the workload.
    #[serde(default)]
    pub broker: BTreeMap<String, BrokerSpec>,
}

/// One `[broker."NAME"]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSpec {
    /// The secret whose value is the credential (its kind gives the defaults below).
    pub secret: String,
    /// Where requests go (`https://...`); default: the kind's real API.
    pub upstream: Option<String>,
    /// `Name: format`, `{}` where the value goes (`Authorization: Bearer {}`).
    pub header: Option<String>,
    /// The variable that gets the broker's base URL.
    pub url_env: Option<String>,
    /// The variable that gets the placeholder.
    pub key_env: Option<String>,
    /// A PEM of CA certificates to trust for the upstream, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Listen on a Unix socket (in a 0700 directory of its own) instead of a loopback port, for
    /// clients that take one (`curl --unix-socket`); its path goes in `socket_env`.
    #[serde(default)]
    pub socket: bool,
    /// The variable that gets the socket's path (default: `NAME_SOCKET`, upper-cased).
    pub socket_env: Option<String>,
}

/// Where secrets come from. At most one of `dir`, `store`, `url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A directory of secret files (a secretfs mount, a Kubernetes or Docker secret volume).
    pub dir: Option<PathBuf>,
    /// The local store file.
    pub store: Option<PathBuf>,
    /// The local store's key file (default: the store path + `.key`).
    pub key_file: Option<PathBuf>,
    /// The workspace server (with `token_file`).
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Workload identity, in place of `token_file`: the platform's signed token file.
    pub identity_token_file: Option<PathBuf>,
    /// The identity binding to ask for, when several might admit the token.
    pub identity_binding: Option<String>,
    /// CA certificates (PEM) to trust for the server, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Wait up to this long for the directory to hold every named secret ("10s").
    pub wait: Option<String>,
}

/// Which of the launcher's own environment variables the workload inherits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InheritEnv {
    #[default]
    All,
    None,
    Only(Vec<String>),
}

impl<'de> Deserialize<'de> for InheritEnv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "inherit_env must be \"all\", \"none\" or a list of variable names",
            )
        })? {
            Raw::Word(w) if w == "all" => Ok(InheritEnv::All),
            Raw::Word(w) if w == "none" => Ok(InheritEnv::None),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "inherit_env {w:?} is not \"all\" or \"none\"; give an allowlist as an array, \
                 e.g. [\"PATH\", \"HOME\"]"
            ))),
            Raw::List(names) => Ok(InheritEnv::Only(names)),
        }
    }
}

impl InheritEnv {
    /// `all`, `none`, or a comma-separated allowlist (`PATH,HOME,LANG`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(InheritEnv::All),
            "none" => Ok(InheritEnv::None),
            "" => Err("inherit_env is empty; use \"all\", \"none\" or NAME,NAME,...".into()),
            list if list
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-,".contains(c)) =>
            {
                Ok(InheritEnv::Only(
                    list.split(',')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ))
            }
            other => Err(format!(
                "inherit_env {other:?} is not \"all\", \"none\" or a list of variable names"
            )),
        }
    }
}

/// Parses a TOML job spec. The error is toml's own message, which gives the line, the column
/// and the offending key; `origin` (the file name) is prepended by the caller.
pub fn parse(text: &str) -> Result<Spec, String> {
    toml::from_str::<Spec>(text).map_err(|e| e.to_string().trim_end().to_owned())
}

/// One `envs` entry of a Lepton job: a plain value or a reference to a workspace secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeptonEnv {
    pub name: String,
    pub value: Option<String>,
    pub value_from: Option<LeptonValueFrom>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LeptonValueFrom {
    pub secret_name_ref: Option<String>,
}

/// What the launcher uses of a Lepton job body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeptonJob {
    pub command: Option<Vec<String>>,
    /// (variable, plain value)
    pub env: Vec<(String, String)>,
    /// (variable, secret name)
    pub secrets: Vec<(String, String)>,
}

/// Reads the JSON body `lep job create` sends (`{"spec": {"envs": [...], "container":
/// {"command": [...]}}}`); a bare spec object (`{"envs": ...}`) is accepted too.
pub fn parse_lepton_job(text: &str) -> Result<LeptonJob, String> {
    #[derive(Deserialize)]
    struct Body {
        spec: Option<JobSpec>,
        #[serde(flatten)]
        bare: JobSpec,
    }
    #[derive(Deserialize, Default)]
    struct JobSpec {
        #[serde(default)]
        envs: Vec<LeptonEnv>,
        container: Option<Container>,
    }
    #[derive(Deserialize, Default)]
    struct Container {
        command: Option<Vec<String>>,
    }
    let body: Body = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let spec = body.spec.unwrap_or(body.bare);
    let mut job = LeptonJob {
        command: spec.container.and_then(|c| c.command),
        ..Default::default()
    };
    for env in spec.envs {
        match (env.value, env.value_from.and_then(|v| v.secret_name_ref)) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "envs entry {:?} has both \"value\" and \"value_from\"; give one",
                    env.name
                ));
            }
            (None, Some(secret)) => job.secrets.push((env.name, secret)),
            (Some(value), None) => job.env.push((env.name, value)),
            (None, None) => {
                return Err(format!(
                    "envs entry {:?} has neither \"value\" nor \"value_from.secret_name_ref\"",
                    env.name
                ));
            }
        }
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str, expected: Result<Spec, &str>) {
        match (parse(toml), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(needle)) => assert!(got.contains(needle), "{got:?} lacks {needle:?}"),
            (got, want) => panic!("{toml:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn full_spec() {
        let text = r#"
command = ["python3", "train.py"]
workdir = "/app"
inherit_env = ["PATH", "HOME"]
[env]
WANDB_PROJECT = "demo"
[secrets]
HF_TOKEN = "HF_TOKEN"
[secret_files]
DB_PASSWORD_FILE = "db-password"
[source]
dir = "/run/secrets"
wait = "10s"
"#;
        let spec = parse(text).unwrap();
        assert_eq!(
            spec.command.as_deref(),
            Some(&["python3".to_owned(), "train.py".to_owned()][..])
        );
        assert_eq!(
            spec.inherit_env,
            Some(InheritEnv::Only(vec!["PATH".into(), "HOME".into()]))
        );
        assert_eq!(spec.env["WANDB_PROJECT"], "demo");
        assert_eq!(spec.secrets["HF_TOKEN"], "HF_TOKEN");
        assert_eq!(spec.secret_files["DB_PASSWORD_FILE"], "db-password");
        assert_eq!(spec.source.dir, Some(PathBuf::from("/run/secrets")));
        assert_eq!(spec.source.wait.as_deref(), Some("10s"));
    }

    #[test]
    fn errors_name_the_line_and_key() {
        check("", Ok(Spec::default()));
        check(
            "inherit_env = \"none\"",
            Ok(Spec {
                inherit_env: Some(InheritEnv::None),
                ..Default::default()
            }),
        );
        check("command = [\"a\"]\n\ncomand = 1\n", Err("line 3"));
        check(
            "command = [\"a\"]\n\ncomand = 1\n",
            Err("unknown field `comand`"),
        );
        check("[source]\ndirr = \"/x\"\n", Err("unknown field `dirr`"));
        check("[secrets\nA = 1", Err("line 1"));
        check(
            "inherit_env = \"some\"",
            Err("is not \"all\" or \"none\"; give an allowlist as an array"),
        );
        check("inherit_env = 3", Err("inherit_env must be"));
        check("[env]\nA = 1\n", Err("line 2"));
    }

    #[test]
    fn inherit_env_from_a_flag() {
        assert_eq!(InheritEnv::parse("all"), Ok(InheritEnv::All));
        assert_eq!(
            InheritEnv::parse("PATH,HOME"),
            Ok(InheritEnv::Only(vec!["PATH".into(), "HOME".into()]))
        );
        assert!(InheritEnv::parse("a b").is_err());
    }

    #[test]
    fn lepton_jobs() {
        let body = r#"{"metadata":{"name":"train"},"spec":{"container":{"image":"x","command":["python3","app.py"]},
            "envs":[{"name":"PLAIN","value":"1"},{"name":"HF_TOKEN","value_from":{"secret_name_ref":"HF_TOKEN"}},
                    {"name":"MY_KEY","value_from":{"secret_name_ref":"OPENAI_API_KEY"}}]}}"#;
        let job = parse_lepton_job(body).unwrap();
        assert_eq!(job.command, Some(vec!["python3".into(), "app.py".into()]));
        assert_eq!(job.env, [("PLAIN".to_owned(), "1".to_owned())]);
        assert_eq!(
            job.secrets,
            [
                ("HF_TOKEN".to_owned(), "HF_TOKEN".to_owned()),
                ("MY_KEY".to_owned(), "OPENAI_API_KEY".to_owned())
            ]
        );
        let bare = parse_lepton_job(r#"{"envs":[{"name":"A","value":"b"}]}"#).unwrap();
        assert_eq!(bare.env.len(), 1);
        assert!(
            parse_lepton_job(r#"{"envs":[{"name":"A"}]}"#)
                .unwrap_err()
                .contains("neither")
        );
        // Both is a mistake to name, not a silent choice.
        let both = parse_lepton_job(
            r#"{"envs":[{"name":"A","value":"x","value_from":{"secret_name_ref":"S"}}]}"#,
        )
        .unwrap_err();
        assert!(
            both.contains("\"A\" has both \"value\" and \"value_from\""),
            "{both}"
        );
        assert!(parse_lepton_job("{").is_err());
    }
}
