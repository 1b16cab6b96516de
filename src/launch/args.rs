//! The flags of `secretfs run`, parsed by hand: the launcher is on every container's start path,
//! and a hand-written parser of a dozen flags costs nothing at start-up. Pure: no IO.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::spec::InheritEnv;
use super::watch::{WatchArgs, parse_duration};

/// Everything given on the command line of `secretfs run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunArgs {
    pub spec: Option<PathBuf>,
    pub lepton_job: Option<PathBuf>,
    /// `-e NAME=VALUE` (plain values only: secrets never travel in argv).
    pub env: Vec<(String, String)>,
    /// `-s ENV=SECRET` or `-s SECRET`.
    pub secrets: Vec<(String, String)>,
    /// `--secret-file ENV=SECRET`.
    pub secret_files: Vec<(String, String)>,
    pub dir: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    /// `--identity-token-file`: workload identity in place of a token.
    pub identity_token_file: Option<PathBuf>,
    pub identity_binding: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub wait: Option<Duration>,
    pub inherit_env: Option<InheritEnv>,
    /// `--allow-unsafe-env NAME`: a variable of `plan::UNSAFE_ENV` that may hold a secret anyway.
    pub allow_unsafe_env: Vec<String>,
    pub workdir: Option<PathBuf>,
    /// `--watch` and its options (checked by `watch::plan`).
    pub watch: WatchArgs,
    /// `--mask`: the workload's output passes through the launcher, values masked.
    pub mask: bool,
    /// `--broker SECRET`: a broker with the secret's kind's defaults (repeatable).
    pub brokers: Vec<String>,
    /// `--broker-ca-file PEM`: trusted for every broker's upstream without a `ca_file`.
    pub broker_ca_file: Option<PathBuf>,
    pub dry_run: bool,
    pub verbose: u8,
    pub help: bool,
    /// The workload's argv (after `--`, or from the first argument that is not a flag).
    pub command: Vec<OsString>,
}

pub const USAGE: &str = "\
usage: secretfs run [OPTIONS] [--] COMMAND [ARGS...]

Resolves the job's secrets into environment variables and execs COMMAND. Fails closed: if any
secret cannot be resolved, every problem is listed and COMMAND does not start (exit 125).

options:
  --spec FILE             job spec (TOML); default: $SECRETFS_SPEC, else ./secretfs.toml if
                          present
  --lepton-job FILE       a Lepton job body (JSON, as `lep job create` sends)
  -e, --env NAME=VALUE    a plain variable (repeatable)
  -s, --secret ENV=SECRET a variable holding a secret's value; -s SECRET means SECRET=SECRET
  --secret-file ENV=SECRET
                          a variable holding the path of a file with the secret's value
  --dir DIR               source: a directory of secret files
  --store PATH            source: the local store (with --key-file PATH)
  --url URL               source: a secretfs server, with a workload token from --token-file
                          PATH, or workload identity from --identity-token-file PATH (the
                          platform's signed token, exchanged and exchanged again before
                          expiry; --identity-binding NAME picks a binding); --ca-file PEM
                          trusts a private CA
                          Which source: these flags, else the spec's [source], else
                          $SECRETFS_DIR, $SECRETFS_STORE or $SECRETFS_URL, else /run/secrets;
                          the credential likewise (else $SECRETFS_TOKEN, $SECRETFS_TOKEN_FILE
                          or $SECRETFS_IDENTITY_TOKEN_FILE). Two at one level are refused.
  --wait DURATION         wait up to DURATION for the directory to hold every secret (\"10s\")
  --inherit-env MODE      all (default), none, or NAME,NAME,... to pass through
                          (SECRETFS_TOKEN, SECRETFS_TOKEN_FILE and SECRETFS_IDENTITY_TOKEN_FILE,
                          the launcher's own credentials, pass only when named or set with -e)
  --allow-unsafe-env NAME let a secret into NAME although the loader, a shell or an interpreter
                          reads it as a path or code (LD_*, BASH_ENV, PYTHONPATH, ...: refused
                          by default; see the README for the list)
  --workdir DIR           run COMMAND in DIR
  --watch                 stay as COMMAND's parent and follow rotations of the secrets it uses
                          (any source; spec: [watch]); with:
    --on-change ACTION    restart (default), signal:NAME (e.g. signal:HUP) or exit
    --stop-signal NAME    how a restart stops COMMAND (TERM); --stop-timeout DURATION (10s)
                          before SIGKILL
    --debounce DURATION   a burst of changes within it is one restart (2s)
    --max-restarts N/DUR  at most N restarts in any DUR (5/10m); past it COMMAND keeps running
    --exit-code N         the exit status of --on-change exit (75)
    --process-group       COMMAND in its own process group, signals sent to the group
    --poll DURATION       how often a directory's or the store's files are checked (250ms)
  files                   the spec's [files.\"NAME\"] tables render files from the secrets
                          (builtin = \"authorized_keys\", \"git-credentials\", ...; or template =
                          FILE) into memory files whose paths go in env = \"VAR\"
  --mask                  pass COMMAND's stdout and stderr through, every value (and its
                          base64 and URL forms) replaced by [secretfs: NAME]; a terminal stays
                          a terminal (spec: mask = true)
  --broker SECRET         the workload calls SECRET's API through the launcher, which adds the
                          credential on the way out: the workload gets a loopback base URL and
                          a placeholder, never the value (openai: OPENAI_BASE_URL and
                          OPENAI_API_KEY; huggingface: HF_ENDPOINT and HF_TOKEN; github: git's
                          insteadOf for https://github.com/, GITHUB_API_URL and GH_TOKEN;
                          datadog: DATADOG_HOST and DD_API_KEY; other kinds: the spec's
                          [broker.\"NAME\"] with upstream, header, url_env, key_env); the launcher
                          stays as the workload's parent and uses a rotated value at once
  --broker-ca-file PEM    CA certificates to trust for the brokers' upstreams, besides the
                          system's
  --dry-run               print the plan (values shown as <secret NAME>) and exit
  -v, --verbose           log what is resolved from where (never values)
  -h, --help              this text

exit status: COMMAND's own (with --watch or --mask: 128+N if it died of signal N); 125 if the launcher
fails before exec, 126 if COMMAND is not executable, 127 if it is not found.
";

/// Splits `NAME=VALUE`; for secrets a bare `NAME` means `NAME=NAME` (Lepton's `-s` form).
fn pair(flag: &str, v: &str, bare_allowed: bool) -> Result<(String, String), String> {
    match v.split_once('=') {
        Some((k, val)) if !k.is_empty() => Ok((k.to_owned(), val.to_owned())),
        None if bare_allowed && !v.is_empty() => Ok((v.to_owned(), v.to_owned())),
        _ => Err(format!(
            "{flag} expects NAME=VALUE{}, got {v:?}",
            if bare_allowed { " or NAME" } else { "" }
        )),
    }
}

/// Parses the arguments after `run`.
pub fn parse(args: &[OsString]) -> Result<RunArgs, String> {
    let mut out = RunArgs::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(text) = arg.to_str() else {
            // A non-UTF-8 argument can only be the start of the command.
            out.command = args[i - 1..].to_vec();
            break;
        };
        if text == "--" {
            out.command = args[i..].to_vec();
            break;
        }
        if !text.starts_with('-') || text == "-" {
            out.command = args[i - 1..].to_vec();
            break;
        }
        // `--flag=value`, `--flag value`, `-s value`, `-svalue`.
        let (flag, inline): (&str, Option<&str>) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ if !text.starts_with("--") && text.len() > 2 => (&text[..2], Some(&text[2..])),
            _ => (text, None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            if let Some(v) = inline {
                return Ok(v.to_owned());
            }
            let v = args
                .get(i)
                .ok_or_else(|| format!("{name} needs a value"))?
                .to_str()
                .ok_or_else(|| format!("the value of {name} is not valid UTF-8"))?
                .to_owned();
            i += 1;
            Ok(v)
        };
        match flag {
            "--spec" => out.spec = Some(value(flag)?.into()),
            "--lepton-job" => out.lepton_job = Some(value(flag)?.into()),
            "-e" | "--env" => out.env.push(pair(flag, &value(flag)?, false)?),
            "-s" | "--secret" => out.secrets.push(pair(flag, &value(flag)?, true)?),
            "--secret-file" => out.secret_files.push(pair(flag, &value(flag)?, true)?),
            "--dir" => out.dir = Some(value(flag)?.into()),
            "--store" => out.store = Some(value(flag)?.into()),
            "--key-file" => out.key_file = Some(value(flag)?.into()),
            "--url" => out.url = Some(value(flag)?),
            "--token-file" => out.token_file = Some(value(flag)?.into()),
            "--identity-token-file" => out.identity_token_file = Some(value(flag)?.into()),
            "--identity-binding" => out.identity_binding = Some(value(flag)?),
            "--ca-file" => out.ca_file = Some(value(flag)?.into()),
            "--wait" => out.wait = Some(parse_duration("--wait", &value(flag)?)?),
            "--inherit-env" => out.inherit_env = Some(InheritEnv::parse(&value(flag)?)?),
            "--allow-unsafe-env" => out.allow_unsafe_env.push(value(flag)?),
            "--workdir" => out.workdir = Some(value(flag)?.into()),
            "--watch" if inline.is_none() => out.watch.enabled = true,
            "--on-change" => out.watch.given.on_change = Some(value(flag)?),
            "--stop-signal" => out.watch.given.stop_signal = Some(value(flag)?),
            "--stop-timeout" => out.watch.given.stop_timeout = Some(value(flag)?),
            "--debounce" => out.watch.given.debounce = Some(value(flag)?),
            "--max-restarts" => out.watch.given.max_restarts = Some(value(flag)?),
            "--poll" => out.watch.given.poll = Some(value(flag)?),
            "--exit-code" => {
                let v = value(flag)?;
                out.watch.given.exit_code = Some(v.parse().map_err(|_| {
                    format!("--exit-code expects a number from 0 to 255, got {v:?}")
                })?);
            }
            "--process-group" if inline.is_none() => out.watch.given.process_group = Some(true),
            "--mask" if inline.is_none() => out.mask = true,
            "--broker" => out.brokers.push(value(flag)?),
            "--broker-ca-file" => out.broker_ca_file = Some(value(flag)?.into()),
            "--dry-run" if inline.is_none() => out.dry_run = true,
            "-v" | "--verbose" if inline.is_none() => out.verbose += 1,
            "-h" | "--help" if inline.is_none() => out.help = true,
            _ if text.starts_with("-v") && text[1..].chars().all(|c| c == 'v') => {
                out.verbose += (text.len() - 1) as u8;
            }
            _ => {
                return Err(format!(
                    "unknown option {flag:?}; run \"secretfs run --help\" for the options"
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<RunArgs, &str>) {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match (parse(&args), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(needle)) => assert!(got.contains(needle), "{got:?} lacks {needle:?}"),
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }

    fn cmd(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_then_command() {
        check(
            &[
                "-s",
                "HF_TOKEN",
                "-s",
                "KEY=openai-prod",
                "--secret-file=DB_FILE=db",
                "-e",
                "A=b=c",
                "--dir",
                "/d",
                "--",
                "python3",
                "-c",
                "x",
            ],
            Ok(RunArgs {
                secrets: vec![
                    ("HF_TOKEN".into(), "HF_TOKEN".into()),
                    ("KEY".into(), "openai-prod".into()),
                ],
                secret_files: vec![("DB_FILE".into(), "db".into())],
                env: vec![("A".into(), "b=c".into())],
                dir: Some("/d".into()),
                command: cmd(&["python3", "-c", "x"]),
                ..Default::default()
            }),
        );
        // Without `--`, the first word that is not a flag starts the command; its own flags stay.
        check(
            &["-sA", "env", "-i"],
            Ok(RunArgs {
                secrets: vec![("A".into(), "A".into())],
                command: cmd(&["env", "-i"]),
                ..Default::default()
            }),
        );
        check(
            &["--wait", "300ms", "--dry-run", "-vv", "true"],
            Ok(RunArgs {
                wait: Some(Duration::from_millis(300)),
                dry_run: true,
                verbose: 2,
                command: cmd(&["true"]),
                ..Default::default()
            }),
        );
        check(
            &["--inherit-env", "PATH,HOME"],
            Ok(RunArgs {
                inherit_env: Some(InheritEnv::Only(vec!["PATH".into(), "HOME".into()])),
                ..Default::default()
            }),
        );
    }

    #[test]
    fn mistakes() {
        check(&["--secrte", "A"], Err("unknown option \"--secrte\""));
        check(&["-s"], Err("-s needs a value"));
        check(&["-e", "NOVALUE"], Err("-e expects NAME=VALUE"));
        check(&["-s", "=x"], Err("expects NAME=VALUE or NAME"));
        check(
            &["--wait", "soon"],
            Err("--wait \"soon\" is not a duration"),
        );
        check(&["--dry-run=yes"], Err("unknown option"));
    }
}
