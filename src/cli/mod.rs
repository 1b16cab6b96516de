//! The command line: clap definitions and dispatch. The only layer that uses `anyhow`; every
//! error reaching `main` is printed as `error: ...` (plus a `hint: ...` line when there is one).

mod audit;
mod config;
mod dotenv;
mod git;
mod input;
mod maintain;
mod mount;
mod node;
mod remote;
mod secret;
mod serve;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::service::StoreError;
use crate::service::{LocalPaths, OpenMode, Service, ServiceError};

#[derive(Debug, Parser)]
#[command(
    name = "secretfs",
    version,
    about = "Workspace secrets for workloads: a read-only FUSE mount, a launcher, a server",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub early: EarlyArgs,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The connection options given before the command (`secretfs --store X secret list`), as
/// scripts have always been able to. Hidden here: each command documents the ones it takes.
#[derive(Debug, Args, Default)]
pub struct EarlyArgs {
    #[arg(long, value_name = "PATH", hide = true)]
    pub store: Option<PathBuf>,
    #[arg(long, value_name = "PATH", hide = true)]
    pub key_file: Option<PathBuf>,
    #[arg(long, value_name = "URL", hide = true)]
    pub url: Option<String>,
    #[arg(long, value_name = "PATH", hide = true)]
    pub token_file: Option<PathBuf>,
    #[arg(long, short = 'w', value_name = "NAME", hide = true)]
    pub workspace: Option<String>,
    #[arg(long, value_name = "PEM", hide = true)]
    pub ca_file: Option<PathBuf>,
}

// The environment variables are read by `GlobalArgs::resolve`, not by clap: a variable clap
// reads counts as a given option, and clap's usage lines then show it as if typed
// ("Usage: secretfs mount --store <PATH> <DIR>").

/// The local store a command acts on.
#[derive(Debug, Args, Default)]
pub struct StoreOpts {
    /// The local store file [env: SECRETFS_STORE] [default: $XDG_DATA_HOME/secretfs/store.db]
    #[arg(long, global = true, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// The local store's key file [env: SECRETFS_KEY_FILE] [default: the store path + ".key"]
    #[arg(long, global = true, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// The server a command talks to.
#[derive(Debug, Args, Default)]
pub struct ServerOpts {
    /// The server (comma-separated replicas) [env: SECRETFS_URL] [default: the one `secretfs
    /// login` saved]
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the token for the server [env: SECRETFS_TOKEN_FILE] (else SECRETFS_TOKEN,
    /// else the token `secretfs login` saved)
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust besides the system's (a private CA) [env:
    /// SECRETFS_CA_FILE]
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// The workspace on the server.
#[derive(Debug, Args, Default)]
pub struct WorkspaceOpt {
    /// The workspace on the server [env: SECRETFS_WORKSPACE] [default: the one `secretfs
    /// login` saved, else default]
    #[arg(long, short = 'w', global = true, value_name = "NAME")]
    pub workspace: Option<String>,
}

/// Where a command acts, resolved: the command's own options, else those given before the
/// command, else the environment.
#[derive(Debug, Default, Clone)]
pub struct GlobalArgs {
    pub store: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub workspace: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub verbose: u8,
    /// What the flags gave (the command's own, else those before it): the first level of
    /// `source::choose`, which decides the source and credential of every command alike.
    pub flags: crate::source::choose::Given,
}

fn env_var(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

impl GlobalArgs {
    fn resolve(
        early: &EarlyArgs,
        verbose: u8,
        store: Option<&StoreOpts>,
        server: Option<&ServerOpts>,
        workspace: Option<&WorkspaceOpt>,
    ) -> anyhow::Result<GlobalArgs> {
        let text = |v: std::ffi::OsString, name: &str| {
            v.into_string()
                .map_err(|_| anyhow::anyhow!("{name} is not valid UTF-8"))
        };
        Ok(GlobalArgs {
            store: store
                .and_then(|s| s.store.clone())
                .or_else(|| early.store.clone())
                .or_else(|| env_var("SECRETFS_STORE").map(PathBuf::from)),
            key_file: store
                .and_then(|s| s.key_file.clone())
                .or_else(|| early.key_file.clone())
                .or_else(|| env_var("SECRETFS_KEY_FILE").map(PathBuf::from)),
            url: match server
                .and_then(|s| s.url.clone())
                .or_else(|| early.url.clone())
            {
                Some(u) => Some(u),
                None => env_var("SECRETFS_URL")
                    .map(|v| text(v, "SECRETFS_URL"))
                    .transpose()?,
            },
            token_file: server
                .and_then(|s| s.token_file.clone())
                .or_else(|| early.token_file.clone())
                .or_else(|| env_var("SECRETFS_TOKEN_FILE").map(PathBuf::from)),
            workspace: match workspace
                .and_then(|w| w.workspace.clone())
                .or_else(|| early.workspace.clone())
            {
                Some(w) => Some(w),
                None => env_var("SECRETFS_WORKSPACE")
                    .map(|v| text(v, "SECRETFS_WORKSPACE"))
                    .transpose()?,
            },
            ca_file: server
                .and_then(|s| s.ca_file.clone())
                .or_else(|| early.ca_file.clone())
                .or_else(|| env_var("SECRETFS_CA_FILE").map(PathBuf::from)),
            verbose,
            flags: {
                use crate::source::choose::{Given, Named};
                let flag_store = store
                    .and_then(|s| s.store.clone())
                    .or_else(|| early.store.clone());
                let flag_url = server
                    .and_then(|s| s.url.clone())
                    .or_else(|| early.url.clone());
                let flag_token_file = server
                    .and_then(|s| s.token_file.clone())
                    .or_else(|| early.token_file.clone());
                Given {
                    store: flag_store.map(|p| Named::new(p, "--store")),
                    url: flag_url.map(|u| Named::new(u, "--url")),
                    key_file: store
                        .and_then(|s| s.key_file.clone())
                        .or_else(|| early.key_file.clone()),
                    ca_file: server
                        .and_then(|s| s.ca_file.clone())
                        .or_else(|| early.ca_file.clone()),
                    token_file: flag_token_file.map(|p| Named::new(p, "--token-file")),
                    ..Given::default()
                }
            },
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, update and delete secrets (in the local store, or on the server).
    Secret {
        #[command(flatten)]
        store: StoreOpts,
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        workspace: WorkspaceOpt,
        #[command(subcommand)]
        cmd: secret::SecretCommand,
    },
    /// Mount the secrets as a read-only filesystem (runs in the foreground).
    Mount(mount::MountArgs),
    /// Check whether FUSE mounts can work here, and say what is missing.
    Doctor,
    /// A read-only git credential helper over a credential file (a mount's git-credentials):
    /// git config credential.helper "!secretfs git-credential --file DIR/git-credentials".
    GitCredential(git::GitCredentialArgs),
    /// Run the workspace API server.
    Serve(serve::ServeArgs),
    /// The node agent: a CSI node plugin for the pods of this node (Kubernetes DaemonSet).
    Node(node::NodeArgs),
    /// Save a server URL and your token (read from stdin or --token-file) for later commands.
    Login(remote::LoginArgs),
    /// Workspaces on the server.
    Workspace {
        #[command(flatten)]
        server: ServerOpts,
        #[command(subcommand)]
        cmd: remote::WorkspaceCommand,
    },
    /// Users of the server (admin).
    User {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        workspace: WorkspaceOpt,
        #[command(subcommand)]
        cmd: remote::UserCommand,
    },
    /// User and workload tokens.
    Token {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        workspace: WorkspaceOpt,
        #[command(subcommand)]
        cmd: remote::TokenCommand,
    },
    /// Workload identity: trust platform-signed tokens (Kubernetes, Lepton, GitHub Actions)
    /// in place of handing workloads a token (admin).
    Identity {
        #[command(flatten)]
        server: ServerOpts,
        #[command(flatten)]
        workspace: WorkspaceOpt,
        #[command(subcommand)]
        cmd: remote::IdentityCommand,
    },
    /// The audit log: on the server (admin) or of the local store; `audit export` writes it
    /// as JSON lines for log shippers.
    Audit(audit::AuditArgs),
    /// The master key that seals every value (in the local store, or on the server).
    Key {
        #[command(flatten)]
        store: StoreOpts,
        #[command(flatten)]
        server: ServerOpts,
        #[command(subcommand)]
        cmd: maintain::KeyCommand,
    },
    /// Write a consistent copy of the store (values stay sealed) to a file.
    Backup(maintain::BackupArgs),
    /// Run a workload with its secrets in its environment ("secretfs run --help" for options).
    #[command(disable_help_flag = true)]
    Run {
        /// The launcher's options, then the command ("secretfs run --help" lists them).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
}

impl Command {
    /// Whether this command runs as a long-lived service (and logs at info by default).
    pub fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Mount(_) | Command::Serve(_) | Command::Node(_)
        )
    }
}

/// How lists and results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// An error with a suggestion for what to do next, printed as a separate `hint:` line.
#[derive(Debug)]
pub struct Hinted {
    pub error: anyhow::Error,
    pub hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Hinted {}

/// A usage error found after parsing (exit status 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Attaches a hint to errors whose remedy is a command.
pub(crate) fn with_store_hint(e: impl Into<ServiceError>) -> anyhow::Error {
    let e = e.into();
    match &e {
        ServiceError::NotFound(_) | ServiceError::Store(StoreError::NotFound(_)) => {
            not_found_hint(e.into())
        }
        ServiceError::Store(StoreError::AlreadyExists(name)) => {
            let name = name.clone();
            name_taken_hint(e.into(), &name)
        }
        _ => e.into(),
    }
}

/// `error` (a secret that is not there, from the local store or a server) with what to run.
pub(crate) fn not_found_hint(error: anyhow::Error) -> anyhow::Error {
    Hinted {
        error,
        hint: "run \"secretfs secret list\" to see the secrets in this store".to_owned(),
    }
    .into()
}

/// `error` (the name is taken) with the command that replaces the value instead.
pub(crate) fn name_taken_hint(
    error: anyhow::Error,
    name: &crate::secret::SecretName,
) -> anyhow::Error {
    Hinted {
        error,
        hint: format!(
            "run \"secretfs secret update {name}\" to replace its value, or choose another name"
        ),
    }
    .into()
}

/// A secret that is not there: the message both stores give, with its hint.
/// `known`: the names the caller may see, for a "did you mean".
pub(crate) fn no_such_secret(
    name: &crate::secret::SecretName,
    known: &[crate::secret::SecretMeta],
) -> anyhow::Error {
    let suggestion =
        crate::secret::did_you_mean(name.as_str(), known.iter().map(|m| m.name.as_str()));
    not_found_hint(anyhow::anyhow!("secret \"{name}\" not found{suggestion}"))
}

/// A name that is taken: the message both stores give, with its hint.
pub(crate) fn name_taken(name: &crate::secret::SecretName) -> anyhow::Error {
    name_taken_hint(
        anyhow::anyhow!("secret \"{name}\" already exists in this workspace"),
        name,
    )
}

pub(crate) use config::{Remote, remote as configured_remote};

pub(crate) async fn open_local(g: &GlobalArgs, mode: OpenMode) -> anyhow::Result<Service> {
    let paths = LocalPaths::resolve(g.store.clone(), g.key_file.clone())?;
    Ok(Service::open_local(&paths, mode, 4).await?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        early,
        verbose,
        command,
    } = cli;
    let g =
        |store, server, workspace| GlobalArgs::resolve(&early, verbose, store, server, workspace);
    match command {
        Command::Secret {
            store,
            server,
            workspace,
            cmd,
        } => {
            let g = g(Some(&store), Some(&server), Some(&workspace))?;
            runtime()?.block_on(secret::run(&g, cmd))
        }
        Command::Mount(args) => {
            let g = g(Some(&args.store), Some(&args.server), None)?;
            mount::mount(&g, args)
        }
        Command::Doctor => mount::doctor(),
        Command::GitCredential(args) => git::git_credential(args),
        Command::Serve(args) => serve::serve(&g(None, None, None)?, args),
        Command::Node(args) => node::node(args),
        Command::Login(args) => runtime()?.block_on(remote::login(&g(None, None, None)?, args)),
        Command::Workspace { server, cmd } => {
            let g = g(None, Some(&server), None)?;
            runtime()?.block_on(remote::workspace(&g, cmd))
        }
        Command::User {
            server,
            workspace,
            cmd,
        } => {
            let g = g(None, Some(&server), Some(&workspace))?;
            runtime()?.block_on(remote::user(&g, cmd))
        }
        Command::Token {
            server,
            workspace,
            cmd,
        } => {
            let g = g(None, Some(&server), Some(&workspace))?;
            runtime()?.block_on(remote::token(&g, cmd))
        }
        Command::Identity {
            server,
            workspace,
            cmd,
        } => {
            let g = g(None, Some(&server), Some(&workspace))?;
            runtime()?.block_on(remote::identity(&g, cmd))
        }
        Command::Audit(args) => {
            let (store, server) = match &args.command {
                Some(audit::AuditCommand::Export(e)) => (&e.store, &e.server),
                None => (&args.store, &args.server),
            };
            let g = g(Some(store), Some(server), None)?;
            runtime()?.block_on(audit::audit(&g, args))
        }
        Command::Key { store, server, cmd } => {
            let g = g(Some(&store), Some(&server), None)?;
            runtime()?.block_on(maintain::key(&g, cmd))
        }
        Command::Backup(args) => {
            let g = g(Some(&args.store), Some(&args.server), None)?;
            runtime()?.block_on(maintain::backup(&g, args))
        }
        Command::Run { args } => {
            // Reached only when options came before "run" (secretfs -v run ...); the store
            // options given there carry over to the launcher.
            let mut forwarded = Vec::new();
            if let Some(store) = &early.store {
                forwarded.extend(["--store".into(), store.clone().into_os_string()]);
            }
            if let Some(key) = &early.key_file {
                forwarded.extend(["--key-file".into(), key.clone().into_os_string()]);
            }
            for _ in 0..verbose {
                forwarded.push("-v".into());
            }
            forwarded.extend(args);
            Ok(crate::launch::main(&forwarded))
        }
    }
}

/// Reports a command-line parsing error. An unexpected positional argument is not echoed: it is
/// most likely a secret value typed where a name was expected, and values never reach an error
/// message.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if e.kind() == ErrorKind::UnknownArgument
        && !e
            .get(clap::error::ContextKind::InvalidArg)
            .is_some_and(|a| a.to_string().starts_with('-'))
    {
        eprintln!(
            "error: unexpected argument (not shown); secret values are never taken from the \
             command line: pipe the value to stdin or use --from-file PATH"
        );
        eprintln!("hint: run \"secretfs help\" for usage");
        return ExitCode::from(2);
    }
    // Help and version are successes clap reports through the error path.
    let _ = e.print();
    // The machine-readable output is an --output format, not a flag of its own.
    if e.kind() == ErrorKind::UnknownArgument
        && e.get(clap::error::ContextKind::InvalidArg)
            .is_some_and(|a| matches!(a.to_string().as_str(), "--json" | "--yaml"))
    {
        eprintln!("hint: output formats are chosen with -o: \"-o json\"");
    }
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// Prints an error the way every command reports failure, and picks the exit status.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    if let Some(h) = err.chain().find_map(|e| e.downcast_ref::<Hinted>()) {
        eprintln!("hint: {}", h.hint);
    }
    if err.chain().any(|e| e.is::<UsageError>()) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// Every command, option and argument a user can see says what it is.
    #[test]
    fn every_option_and_argument_has_a_description() {
        fn walk(cmd: &mut clap::Command, path: &str, missing: &mut Vec<String>) {
            cmd.build();
            if cmd.get_about().is_none() && path != "secretfs" {
                missing.push(format!("{path} (the command)"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} {id}"));
                }
            }
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|c| c.get_name().to_owned())
                .collect();
            for name in names {
                if name == "help" {
                    continue;
                }
                let sub = cmd.find_subcommand_mut(&name).unwrap();
                walk(sub, &format!("{path} {name}"), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&mut super::Cli::command(), "secretfs", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:#?}");
    }

    /// A command lists only the options it uses: the server takes no server to talk to.
    #[test]
    fn commands_list_only_their_own_options() {
        let mut cli = super::Cli::command();
        cli.build();
        let options = |path: &[&str]| -> Vec<String> {
            let mut c = &cli;
            for p in path {
                c = c.find_subcommand(p).unwrap();
            }
            c.get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long().map(str::to_owned))
                .collect()
        };
        let serve = options(&["serve"]);
        for foreign in ["url", "token-file", "workspace", "store", "ca-file"] {
            assert!(
                !serve.contains(&foreign.to_owned()),
                "serve lists --{foreign}"
            );
        }
        assert!(serve.contains(&"key-file".to_owned()));
        let mount = options(&["mount"]);
        assert!(!mount.contains(&"workspace".to_owned()));
        assert!(mount.contains(&"store".to_owned()) && mount.contains(&"url".to_owned()));
        let create = options(&["secret", "create"]);
        for own in ["store", "url", "workspace", "from-file"] {
            assert!(
                create.contains(&own.to_owned()),
                "secret create lacks --{own}"
            );
        }
        assert!(
            options(&["doctor"])
                .iter()
                .all(|o| o == "verbose" || o == "help" || o == "version")
        );
    }
}
