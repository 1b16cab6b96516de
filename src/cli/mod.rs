//! The command line: clap definitions and dispatch. The only layer that uses `anyhow`; every
//! error reaching `main` is printed as `error: ...` (plus a `hint: ...` line when there is one).

mod input;
mod maintain;
mod mount;
mod remote;
mod secret;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::local::{self, LocalPaths, OpenMode};
use crate::store::{StoreError, Vault};

#[derive(Debug, Parser)]
#[command(
    name = "secretfs",
    version,
    about = "Workspace secrets for workloads: a read-only FUSE mount, a launcher, a server",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The local store file [default: $XDG_DATA_HOME/secretfs/store.db].
    #[arg(long, global = true, env = "SECRETFS_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// The local store's key file [default: the store path with ".key" appended].
    #[arg(long, global = true, env = "SECRETFS_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// The server (comma-separated replicas); default: the one `secretfs login` saved.
    #[arg(long, global = true, env = "SECRETFS_URL", value_name = "URL")]
    pub url: Option<String>,
    /// A file holding the token for the server (else SECRETFS_TOKEN, else `login`'s).
    #[arg(long, global = true, env = "SECRETFS_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The workspace on the server [default: default].
    #[arg(long, short = 'w', global = true, env = "SECRETFS_WORKSPACE")]
    pub workspace: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (a private CA).
    #[arg(long, global = true, env = "SECRETFS_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, update and delete secrets.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Mount the secrets as a read-only filesystem (runs in the foreground).
    Mount(mount::MountArgs),
    /// Check whether FUSE mounts can work here, and say what is missing.
    Doctor,
    /// Run the workspace API server.
    Serve(remote::ServeArgs),
    /// Save a server URL and your token (read from stdin or --token-file) for later commands.
    Login(remote::LoginArgs),
    /// Workspaces on the server.
    #[command(subcommand)]
    Workspace(remote::WorkspaceCommand),
    /// Users of the server (admin).
    #[command(subcommand)]
    User(remote::UserCommand),
    /// User and workload tokens.
    #[command(subcommand)]
    Token(remote::TokenCommand),
    /// The server's audit log (admin).
    Audit(remote::AuditArgs),
    /// The master key that seals every value.
    #[command(subcommand)]
    Key(maintain::KeyCommand),
    /// Write a consistent copy of the store (values stay sealed) to a file.
    Backup(maintain::BackupArgs),
    /// Run a workload with its secrets in its environment (see "secretfs run --help").
    #[command(disable_help_flag = true)]
    Run {
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
        matches!(self, Command::Mount(_) | Command::Serve(_))
    }
}

/// How lists and results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
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

/// Attaches a hint to store errors whose remedy is a command.
pub(crate) fn with_store_hint(e: StoreError) -> anyhow::Error {
    let hint = match &e {
        StoreError::NotFound(_) => {
            Some("run \"secretfs secret list\" to see the secrets in this store".to_owned())
        }
        StoreError::AlreadyExists(name) => Some(format!(
            "run \"secretfs secret update {name}\" to replace its value, or choose another name"
        )),
        _ => None,
    };
    match hint {
        Some(hint) => Hinted {
            error: e.into(),
            hint,
        }
        .into(),
        None => e.into(),
    }
}

pub(crate) use remote::{Remote, remote as configured_remote};

pub(crate) async fn open_local(g: &GlobalArgs, mode: OpenMode) -> anyhow::Result<Vault> {
    let paths = LocalPaths::resolve(g.store.clone(), g.key_file.clone())?;
    Ok(local::open(&paths, mode).await?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Secret(cmd) => runtime()?.block_on(secret::run(&cli.global, cmd)),
        Command::Mount(args) => mount::mount(&cli.global, args),
        Command::Doctor => mount::doctor(),
        Command::Serve(args) => remote::serve(&cli.global, args),
        Command::Login(args) => runtime()?.block_on(remote::login(&cli.global, args)),
        Command::Workspace(cmd) => runtime()?.block_on(remote::workspace(&cli.global, cmd)),
        Command::User(cmd) => runtime()?.block_on(remote::user(&cli.global, cmd)),
        Command::Token(cmd) => runtime()?.block_on(remote::token(&cli.global, cmd)),
        Command::Audit(args) => runtime()?.block_on(remote::audit(&cli.global, args)),
        Command::Key(cmd) => runtime()?.block_on(maintain::key(&cli.global, cmd)),
        Command::Backup(args) => runtime()?.block_on(maintain::backup(&cli.global, args)),
        Command::Run { args } => {
            // Reached only when options came before "run" (secretfs -v run ...); the global
            // store options carry over to the launcher.
            let mut forwarded = Vec::new();
            if let Some(store) = &cli.global.store {
                forwarded.extend(["--store".into(), store.clone().into_os_string()]);
            }
            if let Some(key) = &cli.global.key_file {
                forwarded.extend(["--key-file".into(), key.clone().into_os_string()]);
            }
            for _ in 0..cli.global.verbose {
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
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
