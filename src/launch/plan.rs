//! From a spec, flags and the launcher's environment to an [`ExecPlan`]: the workload's argv,
//! working directory, source, and every variable with where it came from. Pure: no IO, so every
//! precedence rule is a one-line test.
//!
//! Precedence, lowest to highest: the inherited environment; the spec's (or Lepton job's)
//! `[env]`, then `[secret_files]`, then `[secrets]`; then the flags `-e`, `--secret-file`, `-s`.
//! Flags win over the spec; within one level a secret wins over a plain value. Every override of
//! an explicitly set variable is reported by name.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::args::RunArgs;
use super::broker::{BrokerPlan, HeaderTemplate, parse_upstream};
use super::spec::{InheritEnv, LeptonJob, Spec};
use super::watch::parse_duration;
use crate::render::{Recipe, RenderedFile};
use crate::secret::SecretName;
use crate::source::choose::{Fallback, Given, Named, choose};

/// Where a variable's value comes from, for the plan's report and for precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    Inherited,
    SpecEnv,
    LeptonEnv,
    SpecSecretFile,
    SpecFile,
    SpecSecret,
    LeptonSecret,
    FlagEnv,
    FlagSecretFile,
    FlagSecret,
    /// Set by the launcher itself (`SECRETFS_DIR`, `CREDENTIALS_DIRECTORY`).
    Launcher,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Inherited => "inherited",
            Origin::SpecEnv => "spec [env]",
            Origin::LeptonEnv => "lepton job envs",
            Origin::SpecSecretFile => "spec [secret_files]",
            Origin::SpecFile => "spec [files]",
            Origin::SpecSecret => "spec [secrets]",
            Origin::LeptonSecret => "lepton job envs (secret_name_ref)",
            Origin::FlagEnv => "-e",
            Origin::FlagSecretFile => "--secret-file",
            Origin::FlagSecret => "-s",
            Origin::Launcher => "launcher",
        }
    }

    /// Higher wins; equal ranks let the later setting win.
    fn rank(self) -> u8 {
        match self {
            Origin::Inherited => 0,
            Origin::Launcher => 1,
            Origin::SpecEnv | Origin::LeptonEnv => 2,
            Origin::SpecSecretFile | Origin::SpecFile => 3,
            Origin::SpecSecret | Origin::LeptonSecret => 4,
            Origin::FlagEnv => 5,
            Origin::FlagSecretFile => 6,
            Origin::FlagSecret => 7,
        }
    }
}

/// What a variable will hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Plain(OsString),
    /// The secret's value.
    Secret(SecretName),
    /// The path of a file holding the secret's value.
    SecretFile(SecretName),
    /// The path of the rendered file of this name (of `ExecPlan::files`).
    Rendered(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub value: Value,
    pub origin: Origin,
}

/// Where the secrets come from: the one `SourceSpec` every consumer chooses the same way.
pub use crate::source::choose::SourceSpec as SourcePlan;

/// Everything the launcher will do, decided before any secret is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    pub command: Vec<OsString>,
    pub workdir: Option<PathBuf>,
    pub source: SourcePlan,
    /// Inherited variables that pass the `inherit_env` filter and are not overridden.
    pub inherited: Vec<(OsString, OsString)>,
    pub inherit: InheritEnv,
    /// Explicit variables, by name.
    pub vars: Vec<Var>,
    /// Overrides, reported by name (never a value).
    pub notes: Vec<String>,
    /// `--watch`: the launcher stays as the workload's parent (`None`: it execs, unless it
    /// masks).
    pub watch: Option<super::watch::WatchPlan>,
    /// `--mask`: the launcher stays as the workload's parent and masks its output.
    pub mask: bool,
    /// The rendered files the variables of `Value::Rendered` name.
    pub files: Vec<RenderedFile>,
    /// Brokered credentials: the launcher stays as the workload's parent and forwards its
    /// calls, adding the credential.
    pub brokers: Vec<BrokerPlan>,
}

impl ExecPlan {
    /// Names of the secrets the plan needs, each once, sorted.
    pub fn secret_names(&self) -> Vec<SecretName> {
        let mut names: Vec<SecretName> = self
            .vars
            .iter()
            .filter_map(|v| match &v.value {
                Value::Secret(n) | Value::SecretFile(n) => Some(n.clone()),
                Value::Plain(_) | Value::Rendered(_) => None,
            })
            .collect();
        for f in &self.files {
            names.extend(named_by(f));
        }
        names.sort();
        names.dedup();
        names
    }
}

impl ExecPlan {
    /// The plan as `--dry-run` prints it: variable names with their origin; secret values shown
    /// as `<secret NAME>` (this runs before any value is read, so none can appear).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let words: Vec<String> = self
            .command
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        out.push_str(&format!("command: {}\n", words.join(" ")));
        if let Some(w) = &self.workdir {
            out.push_str(&format!("workdir: {}\n", w.display()));
        }
        match &self.source {
            SourcePlan::Dir { path, wait } => {
                out.push_str(&format!("source: dir {}", path.display()));
                if let Some(w) = wait {
                    out.push_str(&format!(" (wait {})", humantime::format_duration(*w)));
                }
                out.push('\n');
            }
            SourcePlan::Store { path, .. } => {
                let shown = path
                    .as_ref()
                    .map_or("(the default)".into(), |p| p.display().to_string());
                out.push_str(&format!("source: store {shown}\n"));
            }
            SourcePlan::Server {
                urls, credential, ..
            } => {
                out.push_str(&format!("source: server {urls}"));
                if let crate::source::choose::CredentialSpec::Identity { file, .. } = credential {
                    out.push_str(&format!(" (workload identity from {})", file.display()));
                }
                out.push('\n');
            }
        }
        let inherit = match &self.inherit {
            InheritEnv::All => "all".to_owned(),
            InheritEnv::None => "none".to_owned(),
            InheritEnv::Only(names) => names.join(","),
        };
        out.push_str(&format!(
            "inherit: {inherit} ({} variables)\n",
            self.inherited.len()
        ));
        for v in &self.vars {
            let shown = match &v.value {
                Value::Plain(p) => p.to_string_lossy().into_owned(),
                Value::Secret(n) => format!("<secret {n}>"),
                Value::SecretFile(n) => format!("<file of secret {n}>"),
                Value::Rendered(f) => match self.files.iter().find(|x| &x.name == f) {
                    Some(RenderedFile {
                        recipe: Recipe::Builtin { which, .. },
                        ..
                    }) => format!("<file {f} rendered by builtin {}>", which.as_str()),
                    _ => format!("<file {f} rendered from its template>"),
                },
            };
            out.push_str(&format!("{}={shown}  # {}\n", v.name, v.origin.label()));
        }
        if let Some(w) = &self.watch {
            let every = humantime::format_duration(w.poll);
            let follows = match &self.source {
                SourcePlan::Dir { .. } => format!("the used files checked every {every}"),
                SourcePlan::Store { .. } => {
                    format!("the store's files checked every {every}, then its listing")
                }
                SourcePlan::Server { .. } => "the server's long-poll".to_owned(),
            };
            out.push_str(&w.render(&follows));
        }
        if self.mask {
            out.push_str(&format!(
                "mask: stdout and stderr through the launcher, each value of {} bytes or more \
                 (and its base64 and URL forms) shown as [secretfs: NAME]\n",
                MIN_MASKED
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

/// Below this many bytes a value is not masked by `--mask` (masking `1` or `true` would mangle
/// ordinary output); the launcher says which are.
pub const MIN_MASKED: usize = 6;

/// Variables that the dynamic loader, libc, a shell or an interpreter reads as a path or as
/// code, with the reason. A secret in one of them can end up in an error message (ld.so prints
/// an `LD_PRELOAD` it cannot load, value and all) or run as code (`BASH_ENV` names a file bash
/// executes), so the planner refuses to put one there unless `--allow-unsafe-env` names it.
/// Most come from glibc's list of variables it ignores in setuid programs for the same reason;
/// the rest are shells' and interpreters' start-up hooks. A trailing `*` matches a prefix.
pub const UNSAFE_ENV: &[(&str, &str)] = &[
    (
        "LD_*",
        "the dynamic loader reads it as libraries to load or as its own options",
    ),
    (
        "GCONV_PATH",
        "glibc loads character-set conversion modules from it",
    ),
    ("GETCONF_DIR", "glibc reads it as a directory of programs"),
    ("HOSTALIASES", "the resolver reads it as a file"),
    ("LOCALDOMAIN", "the resolver reads it as its search list"),
    ("LOCPATH", "glibc loads locale data from it"),
    ("MALLOC_TRACE", "glibc writes a trace file there"),
    ("NIS_PATH", "glibc reads it as paths"),
    ("NLSPATH", "glibc loads message catalogs from it"),
    ("RESOLV_HOST_CONF", "the resolver reads it as a file"),
    ("RES_OPTIONS", "the resolver reads it as its options"),
    ("TMPDIR", "programs create files in it"),
    ("TZDIR", "glibc loads time zone files from it"),
    ("PATH", "the launcher and shells search it for programs"),
    ("BASH_ENV", "bash runs the file it names before any script"),
    ("ENV", "sh and bash run the file it names at start"),
    (
        "BASH_FUNC_*",
        "bash imports it as a function definition (code)",
    ),
    ("SHELLOPTS", "bash reads it as its options"),
    ("BASHOPTS", "bash reads it as its options"),
    ("PS4", "bash expands it as code when tracing"),
    ("PROMPT_COMMAND", "bash runs it as code"),
    ("IFS", "shells split every word with it"),
    ("CDPATH", "shells search it for directories"),
    ("PYTHONPATH", "Python imports modules from it"),
    ("PYTHONHOME", "Python loads its standard library from it"),
    ("PYTHONSTARTUP", "Python runs the file it names"),
    (
        "PYTHONWARNINGS",
        "Python prints a filter it cannot parse, value and all",
    ),
    (
        "PYTHONIOENCODING",
        "Python prints an encoding it does not know, value and all",
    ),
    (
        "PYTHONPLATLIBDIR",
        "Python prints the paths it builds from it when they hold no library",
    ),
    (
        "PYTHONPYCACHEPREFIX",
        "Python writes its bytecode cache under the directory it names (a path on disk)",
    ),
    (
        "PYTHONBREAKPOINT",
        "Python imports and calls what it names (code)",
    ),
    (
        "LC_*",
        "bash and perl print a locale they cannot set, value and all",
    ),
    ("LANG", "perl prints a locale it cannot set, value and all"),
    (
        "BASH_XTRACEFD",
        "bash prints a value that is not a file descriptor",
    ),
    ("OPTIND", "sh prints a value that is not a number"),
    ("PERL5OPT", "perl reads it as command-line options (code)"),
    ("PERL5LIB", "perl loads modules from it"),
    ("PERLLIB", "perl loads modules from it"),
    ("PERL5DB", "perl runs it as code"),
    ("PERL_SIGNALS", "perl prints a value it does not know"),
    ("PERL_PERTURB_KEYS", "perl prints a value it does not know"),
    ("RUBYOPT", "ruby reads it as command-line options (code)"),
    ("RUBYLIB", "ruby loads libraries from it"),
    (
        "NODE_OPTIONS",
        "node reads it as options (--require runs code)",
    ),
    ("NODE_PATH", "node loads modules from it"),
    (
        "NODE_V8_COVERAGE",
        "node writes coverage files under the directory it names (a path on disk)",
    ),
    (
        "NODE_REDIRECT_WARNINGS",
        "node writes its warnings to the file it names (a path on disk)",
    ),
    (
        "JAVA_TOOL_OPTIONS",
        "the JVM reads it as options (-javaagent runs code)",
    ),
    ("_JAVA_OPTIONS", "the JVM reads it as options"),
    ("JDK_JAVA_OPTIONS", "the java launcher reads it as options"),
];

/// Why `name` must not hold a secret, if it must not.
pub fn unsafe_env_reason(name: &str) -> Option<&'static str> {
    UNSAFE_ENV.iter().find_map(|(pattern, why)| {
        let hit = match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *pattern,
        };
        hit.then_some(*why)
    })
}

/// The launcher's own credentials: read by the launcher, never inherited by the workload (a
/// renewable token for the whole set, where the spec mapped one secret), unless the spec or a
/// flag sets the variable or an `inherit_env` allowlist names it.
pub const LAUNCHER_CREDENTIALS: &[&str] = &[
    "SECRETFS_TOKEN",
    "SECRETFS_TOKEN_FILE",
    "SECRETFS_IDENTITY_TOKEN_FILE",
];

/// The environment variable name rule, stated in errors.
pub const ENV_RULE: &str = "a letter or '_' first, then letters, digits, '_', '.' or '-'";

pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The secrets a rendered file names itself (a template's references, a built-in's chosen
/// secret); a built-in's set is known only from the source's listing.
pub fn named_by(file: &RenderedFile) -> Vec<SecretName> {
    match &file.recipe {
        Recipe::Template(_) => file.uses(&[]).unwrap_or_default(),
        Recipe::Builtin { secret, .. } => secret.iter().cloned().collect(),
    }
}

/// The inputs of planning.
pub struct Inputs<'a> {
    pub args: &'a RunArgs,
    /// The spec and the directory its relative paths are relative to.
    pub spec: Option<(&'a Spec, &'a Path)>,
    pub lepton: Option<&'a LeptonJob>,
    /// The launcher's own environment.
    pub base_env: &'a [(OsString, OsString)],
    /// The launcher's working directory: relative paths from flags are relative to it, and the
    /// paths handed to the workload are absolute (it may run elsewhere, see `workdir`).
    pub cwd: &'a Path,
    /// The spec's `[files]`, loaded (templates read and parsed).
    pub files: &'a [RenderedFile],
}

/// Plans the launch, or lists every problem found. Each step below does one job and adds what
/// it finds wrong to `problems`, so the user sees every problem at once.
pub fn plan(inputs: Inputs<'_>) -> Result<ExecPlan, Vec<String>> {
    let Inputs {
        args,
        spec,
        lepton,
        base_env,
        cwd,
        files,
    } = inputs;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let empty = Spec::default();
    let (spec, spec_dir) = spec.unwrap_or((&empty, Path::new(".")));
    let paths = Paths {
        cwd,
        spec_dir: cwd.join(spec_dir),
    };

    let wanted = wanted(args, spec, lepton, files, &mut problems);
    let mut vars = merge(wanted, &mut problems, &mut notes);
    refuse_unsafe(&vars, args, spec, &mut problems);
    let source = plan_source(args, spec, &paths, base_env, files, &mut problems);
    let command = command(args, spec, lepton, files, &mut problems, &mut notes);

    // Programs find secret files the way they already know.
    if let SourcePlan::Dir { path, .. } = &source {
        for name in ["SECRETFS_DIR", "CREDENTIALS_DIRECTORY"] {
            vars.entry(name.to_owned()).or_insert_with(|| Var {
                name: name.to_owned(),
                value: Value::Plain(path.clone().into_os_string()),
                origin: Origin::Launcher,
            });
        }
    }

    let inherit = args
        .inherit_env
        .clone()
        .or_else(|| spec.inherit_env.clone())
        .unwrap_or_default();
    let inherited = inherited(base_env, &inherit, &vars);
    let watch = plan_watch(args, spec, &source, files, &mut problems);
    let brokers = plan_brokers(args, spec, &paths, &vars, &mut problems, &mut notes);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ExecPlan {
        command,
        workdir: args
            .workdir
            .as_ref()
            .map(|p| paths.here(p))
            .or_else(|| spec.workdir.as_deref().map(|p| paths.rel(p))),
        source,
        inherited,
        inherit,
        vars: vars.into_values().collect(),
        notes,
        watch,
        mask: args.mask || spec.mask,
        files: files.to_vec(),
        brokers,
    })
}

/// The brokers of the spec (`[broker."NAME"]`) and the flags (`--broker SECRET`, named after
/// their secret), each setting checked; a variable a broker sets that the plan also sets is a
/// problem (the kinds' default variables are checked once the source says the kinds).
fn plan_brokers(
    args: &RunArgs,
    spec: &Spec,
    paths: &Paths<'_>,
    vars: &BTreeMap<String, Var>,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<BrokerPlan> {
    let mut brokers: Vec<BrokerPlan> = Vec::new();
    let flag_ca = args.broker_ca_file.as_ref().map(|p| paths.here(p));
    for (name, b) in &spec.broker {
        let at = format!("[broker.{name:?}]");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            problems.push(format!(
                "{at}: a broker's name is letters, digits, '_', '-' and '.'"
            ));
            continue;
        }
        let mut errors = Vec::new();
        let secret = SecretName::parse(&b.secret)
            .map_err(|e| errors.push(format!("secret: {e}")))
            .ok();
        let upstream = b
            .upstream
            .as_deref()
            .and_then(|u| parse_upstream(u).map_err(|e| errors.push(e)).ok());
        let header = b
            .header
            .as_deref()
            .and_then(|h| HeaderTemplate::parse(h).map_err(|e| errors.push(e)).ok());
        for v in [&b.url_env, &b.key_env, &b.socket_env]
            .into_iter()
            .flatten()
        {
            if !valid_env_name(v) {
                errors.push(format!(
                    "invalid environment variable name {v:?}: use {ENV_RULE}"
                ));
            }
        }
        if b.socket_env.is_some() && !b.socket {
            errors.push("socket_env names the socket's variable: set socket = true too".into());
        }
        let Some(secret) = secret.filter(|_| errors.is_empty()) else {
            problems.extend(errors.into_iter().map(|e| format!("{at}: {e}")));
            continue;
        };
        brokers.push(BrokerPlan {
            name: name.clone(),
            secret,
            upstream,
            header,
            url_env: b.url_env.clone(),
            key_env: b.key_env.clone(),
            ca_file: b.ca_file.as_ref().map(|p| paths.rel(p)).or(flag_ca.clone()),
            socket_env: b.socket.then(|| {
                b.socket_env
                    .clone()
                    .unwrap_or_else(|| super::broker::default_socket_env(name))
            }),
        });
    }
    for s in &args.brokers {
        let Ok(secret) =
            SecretName::parse(s).map_err(|e| problems.push(format!("--broker {s:?}: {e}")))
        else {
            continue;
        };
        if brokers.iter().any(|b| b.secret == secret) {
            notes.push(format!(
                "--broker {secret}: the spec brokers \"{secret}\" already; its settings are used"
            ));
            continue;
        }
        brokers.push(BrokerPlan {
            name: secret.as_str().to_owned(),
            secret,
            upstream: None,
            header: None,
            url_env: None,
            key_env: None,
            ca_file: flag_ca.clone(),
            socket_env: None,
        });
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for b in &brokers {
        for v in [&b.url_env, &b.key_env, &b.socket_env]
            .into_iter()
            .flatten()
        {
            if let Some(other) = seen.insert(v, &b.name) {
                problems.push(format!(
                    "{v} is set by broker \"{other}\" and by broker \"{}\"; give each its own \
                     variable",
                    b.name
                ));
            }
            if let Some(var) = vars.get(v.as_str()) {
                problems.push(format!(
                    "{v} is set by {} and by broker \"{}\"; a brokered workload gets the \
                     placeholder and the broker's URL, not the value: drop one",
                    var.origin.label(),
                    b.name
                ));
            }
        }
    }
    brokers
}

/// Where relative paths are relative to: a flag's to the launcher's working directory, the
/// spec's to the spec's directory; both made absolute (the workload may run elsewhere).
struct Paths<'a> {
    cwd: &'a Path,
    spec_dir: PathBuf,
}

impl Paths<'_> {
    fn here(&self, p: &Path) -> PathBuf {
        self.cwd.join(p)
    }

    fn rel(&self, p: &Path) -> PathBuf {
        self.spec_dir.join(p)
    }
}

/// Every variable some layer sets, lowest layer first, with where it came from.
fn wanted(
    args: &RunArgs,
    spec: &Spec,
    lepton: Option<&LeptonJob>,
    files: &[RenderedFile],
    problems: &mut Vec<String>,
) -> Vec<(String, Value, Origin)> {
    let mut wanted = Vec::new();
    let secret = |name: &str, origin: Origin, problems: &mut Vec<String>| {
        SecretName::parse(name)
            .map_err(|e| problems.push(format!("{}: {e}", origin.label())))
            .ok()
    };
    for (k, v) in &spec.env {
        wanted.push((k.clone(), Value::Plain(v.into()), Origin::SpecEnv));
    }
    for (k, v) in lepton.iter().flat_map(|j| &j.env) {
        wanted.push((k.clone(), Value::Plain(v.into()), Origin::LeptonEnv));
    }
    for (k, s) in &spec.secret_files {
        if let Some(n) = secret(s, Origin::SpecSecretFile, problems) {
            wanted.push((k.clone(), Value::SecretFile(n), Origin::SpecSecretFile));
        }
    }
    for f in files {
        match &f.env {
            Some(var) => wanted.push((
                var.clone(),
                Value::Rendered(f.name.clone()),
                Origin::SpecFile,
            )),
            None => problems.push(format!(
                "[files.{:?}]: set env = \"VAR\", the variable that gets the file's path \
                 (the launcher's rendered files are memory files, found through a variable)",
                f.name
            )),
        }
    }
    for (k, s) in &spec.secrets {
        if let Some(n) = secret(s, Origin::SpecSecret, problems) {
            wanted.push((k.clone(), Value::Secret(n), Origin::SpecSecret));
        }
    }
    for (k, s) in lepton.iter().flat_map(|j| &j.secrets) {
        if let Some(n) = secret(s, Origin::LeptonSecret, problems) {
            wanted.push((k.clone(), Value::Secret(n), Origin::LeptonSecret));
        }
    }
    for (k, v) in &args.env {
        wanted.push((k.clone(), Value::Plain(v.into()), Origin::FlagEnv));
    }
    for (k, s) in &args.secret_files {
        if let Some(n) = secret(s, Origin::FlagSecretFile, problems) {
            wanted.push((k.clone(), Value::SecretFile(n), Origin::FlagSecretFile));
        }
    }
    for (k, s) in &args.secrets {
        if let Some(n) = secret(s, Origin::FlagSecret, problems) {
            wanted.push((k.clone(), Value::Secret(n), Origin::FlagSecret));
        }
    }
    wanted
}

/// One variable per name: the higher origin wins, a later one of equal rank wins; every
/// override of an explicitly set variable is noted by name.
fn merge(
    wanted: Vec<(String, Value, Origin)>,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> BTreeMap<String, Var> {
    let mut vars: BTreeMap<String, Var> = BTreeMap::new();
    for (name, value, origin) in wanted {
        if !valid_env_name(&name) {
            problems.push(format!(
                "invalid environment variable name {name:?} ({}): use {ENV_RULE}",
                origin.label()
            ));
            continue;
        }
        if let Some(prev) = vars.get(&name) {
            let keep = prev.origin.rank() > origin.rank();
            let winner = if keep { prev.origin } else { origin };
            notes.push(format!(
                "{name} is set by {} and by {}; {} wins",
                prev.origin.label(),
                origin.label(),
                winner.label()
            ));
            if keep {
                continue;
            }
        }
        vars.insert(
            name.clone(),
            Var {
                name,
                value,
                origin,
            },
        );
    }
    vars
}

/// A secret in a variable that a program runs as code or prints is refused unless allowed.
fn refuse_unsafe(
    vars: &BTreeMap<String, Var>,
    args: &RunArgs,
    spec: &Spec,
    problems: &mut Vec<String>,
) {
    let allowed: Vec<&str> = args
        .allow_unsafe_env
        .iter()
        .chain(&spec.allow_unsafe_env)
        .map(String::as_str)
        .collect();
    for var in vars.values() {
        let (n, what) = match &var.value {
            Value::Secret(n) => (n.as_str(), "secret"),
            Value::SecretFile(n) => (n.as_str(), "the file of secret"),
            Value::Rendered(f) => (f.as_str(), "the rendered file"),
            Value::Plain(_) => continue,
        };
        if let Some(why) = unsafe_env_reason(&var.name)
            && !allowed.contains(&var.name.as_str())
        {
            problems.push(format!(
                "refusing to put {what} \"{n}\" in {} ({}): {why}, so a value there can reach an \
                 error message or run as code; map the secret to another variable, or if you \
                 really mean it pass --allow-unsafe-env {} (spec: allow_unsafe_env = [\"{}\"])",
                var.name,
                var.origin.label(),
                var.name,
                var.name
            ));
        }
    }
}

/// The source and its credential: flags, then the spec's [source], then the environment, then
/// the directory /run/secrets (`source::choose`, the rule of every consumer).
fn plan_source(
    args: &RunArgs,
    spec: &Spec,
    paths: &Paths<'_>,
    base_env: &[(OsString, OsString)],
    files: &[RenderedFile],
    problems: &mut Vec<String>,
) -> SourcePlan {
    let wait = match (args.wait, &spec.source.wait) {
        (Some(w), _) => Some(w),
        (None, Some(text)) => match parse_duration("[source] wait", text) {
            Ok(w) => Some(w),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        (None, None) => None,
    };
    let here = |p: &PathBuf| paths.here(p);
    let flags = Given {
        dir: args.dir.as_ref().map(|d| Named::new(here(d), "--dir")),
        store: args.store.as_ref().map(|d| Named::new(here(d), "--store")),
        url: args.url.as_ref().map(|u| Named::new(u.clone(), "--url")),
        key_file: args.key_file.as_ref().map(here),
        ca_file: args.ca_file.as_ref().map(here),
        token: None,
        token_file: args
            .token_file
            .as_ref()
            .map(|f| Named::new(here(f), "--token-file")),
        identity_file: args
            .identity_token_file
            .as_ref()
            .map(|f| Named::new(here(f), "--identity-token-file")),
        identity_binding: args.identity_binding.clone(),
    };
    let s = &spec.source;
    let rel = |p: &Path| paths.rel(p);
    let from_spec = Given {
        dir: s.dir.as_deref().map(|d| Named::new(rel(d), "[source] dir")),
        store: s
            .store
            .as_deref()
            .map(|d| Named::new(rel(d), "[source] store")),
        url: s
            .url
            .as_ref()
            .map(|u| Named::new(u.clone(), "[source] url")),
        key_file: s.key_file.as_deref().map(rel),
        ca_file: s.ca_file.as_deref().map(rel),
        token: None,
        token_file: s
            .token_file
            .as_deref()
            .map(|f| Named::new(rel(f), "[source] token_file")),
        identity_file: s
            .identity_token_file
            .as_deref()
            .map(|f| Named::new(rel(f), "[source] identity_token_file")),
        identity_binding: s.identity_binding.clone(),
    };
    let from_env = crate::source::choose::from_environment(base_env, paths.cwd, true);
    let source = match choose(
        &[&flags, &from_spec, &from_env],
        Fallback::Dir(PathBuf::from("/run/secrets")),
    ) {
        Ok(SourcePlan::Dir { path, .. }) => SourcePlan::Dir { path, wait },
        Ok(other) => other,
        Err(more) => {
            problems.extend(more);
            SourcePlan::Dir {
                path: PathBuf::from("/run/secrets"),
                wait: None,
            }
        }
    };
    if wait.is_some() && !matches!(source, SourcePlan::Dir { .. }) {
        problems.push("wait applies only to a directory source".into());
    }
    if matches!(source, SourcePlan::Dir { .. }) {
        for f in files {
            if let Recipe::Builtin { which, .. } = &f.recipe {
                problems.push(format!(
                    "[files.{:?}]: the builtin {} is made from the secrets of a kind, which only \
                     the store or a server knows (a directory has files, not kinds): use --store \
                     or --url, a template, or mount with --files",
                    f.name,
                    which.as_str()
                ));
            }
        }
    }
    source
}

/// The workload's argv: after "--", else the spec's, else the Lepton job's.
fn command(
    args: &RunArgs,
    spec: &Spec,
    lepton: Option<&LeptonJob>,
    files: &[RenderedFile],
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<OsString> {
    let command: Vec<OsString> = if !args.command.is_empty() {
        args.command.clone()
    } else if let Some(c) = spec
        .command
        .as_ref()
        .or(lepton.and_then(|j| j.command.as_ref()))
    {
        c.iter().map(OsString::from).collect()
    } else {
        Vec::new()
    };
    if command.is_empty() {
        problems.push("no command to run: give it after \"--\" or set command in the spec".into());
    }
    // sshd closes the descriptors it inherits at start, and refuses a key file whose path it
    // cannot resolve (/proc/PID/fd/N) under StrictModes: a memory file cannot reach it.
    let sshd = command
        .first()
        .is_some_and(|c| Path::new(c).file_name().is_some_and(|n| n == "sshd"));
    for f in files {
        if sshd
            && let Recipe::Builtin {
                which: crate::render::Builtin::AuthorizedKeys,
                ..
            } = &f.recipe
        {
            notes.push(format!(
                "[files.{:?}]: sshd cannot use a memory file (it closes inherited descriptors and \
                 refuses /proc/PID/fd paths under StrictModes): mount the secrets with \
                 \"secretfs mount DIR --files FILES.toml\" and point AuthorizedKeysFile at \
                 DIR/{}",
                f.name, f.name
            ));
        }
    }
    command
}

/// What the workload inherits of the launcher's environment: never the launcher's own
/// credentials unless named, never a variable the plan sets.
fn inherited(
    base_env: &[(OsString, OsString)],
    inherit: &InheritEnv,
    vars: &BTreeMap<String, Var>,
) -> Vec<(OsString, OsString)> {
    base_env
        .iter()
        .filter(|(k, _)| match inherit {
            InheritEnv::All => !LAUNCHER_CREDENTIALS.iter().any(|c| k == c),
            InheritEnv::None => false,
            InheritEnv::Only(names) => names.iter().any(|n| k == n.as_str()),
        })
        .filter(|(k, _)| k.to_str().is_none_or(|k| !vars.contains_key(k)))
        .cloned()
        .collect()
}

/// The watch, refused where its signal could not reach what changed.
fn plan_watch(
    args: &RunArgs,
    spec: &Spec,
    source: &SourcePlan,
    files: &[RenderedFile],
    problems: &mut Vec<String>,
) -> Option<super::watch::WatchPlan> {
    let watch = match super::watch::plan(&args.watch, spec.watch.as_ref()) {
        Ok(w) => w,
        Err(more) => {
            problems.extend(more);
            None
        }
    };
    if let Some(w) = &watch
        && let super::watch::OnChange::Signal(sig) = w.on_change
    {
        let sig = sig.as_str().trim_start_matches("SIG");
        if !matches!(source, SourcePlan::Dir { .. }) {
            problems.push(format!(
                "--on-change signal:{sig} tells a running workload to read its files again, and \
                 only a directory source changes them under it (the variables and memory files \
                 from the store or a server keep the values they were started with): use \
                 --on-change restart or exit, or mount the secrets and pass --dir"
            ));
        }
        if !files.is_empty() {
            problems.push(format!(
                "--on-change signal:{sig} cannot update rendered files: the launcher's are \
                 memory files that keep the rendering they started with; use --on-change \
                 restart, or mount the secrets with --files and pass --dir"
            ));
        }
    }
    watch
}

#[cfg(test)]
mod tests;
