//! `secretfs git-credential --file PATH ACTION`: a read-only git credential helper over a file
//! in git's credential-store format (`https://USER:PASSWORD@HOST[:PORT][/PATH]`, one per line),
//! such as a mount's rendered `git-credentials`.
//!
//! Why not git's own `store` helper: it writes back on every `store` and `erase`, which on a
//! read-only mount fails after every successful clone ("unable to get credential storage lock:
//! Read-only file system"), and users read that as a failed login. This one answers `get` from
//! the file and accepts `store` and `erase` without writing anything.
//!
//! The protocol is git's `credential` format (gitcredentials(7)): `key=value` lines on stdin up
//! to a blank line or the end, the answer likewise on stdout. It is parsed here, by hand: six
//! lines of `split_once`, which no crate would make shorter or safer.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct GitCredentialArgs {
    /// The credential file: git's credential-store format, one URL per line (e.g. a mount's
    /// rendered git-credentials).
    #[arg(long, value_name = "PATH")]
    pub file: PathBuf,
    /// What git asks: get (answered from the file), store or erase (accepted, nothing written).
    pub action: String,
}

/// The most git sends for one request; more is not a credential request.
const REQUEST_MAX: u64 = 64 * 1024;

pub fn git_credential(a: GitCredentialArgs) -> anyhow::Result<ExitCode> {
    let mut request = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .take(REQUEST_MAX)
        .read_to_string(&mut request)
        .context("cannot read git's request from stdin")?;
    if a.action != "get" {
        // store, erase, and whatever git may add: the file is read-only by design.
        return Ok(ExitCode::SUCCESS);
    }
    let wanted = Request::parse(&request);
    let file = Zeroizing::new(
        std::fs::read_to_string(&a.file)
            .with_context(|| format!("cannot read the credential file {}", a.file.display()))?,
    );
    if let Some(answer) = wanted.answer(&file) {
        let mut out = std::io::stdout().lock();
        out.write_all(answer.as_bytes())?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What git asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    protocol: String,
    host: String,
    path: Option<String>,
    username: Option<String>,
}

impl Request {
    fn parse(text: &str) -> Request {
        let mut r = Request::default();
        for line in text.lines().take_while(|l| !l.is_empty()) {
            match line.split_once('=') {
                Some(("protocol", v)) => r.protocol = v.to_owned(),
                Some(("host", v)) => r.host = v.to_ascii_lowercase(),
                Some(("path", v)) => r.path = Some(v.trim_matches('/').to_owned()),
                Some(("username", v)) => r.username = Some(v.to_owned()),
                _ => {}
            }
        }
        r
    }

    /// `username=...` and `password=...` of the first line of `file` that matches, as git's
    /// store helper matches: protocol and host (with its port); the path when both have one;
    /// the username when git names one.
    fn answer(&self, file: &str) -> Option<Zeroizing<String>> {
        for line in file.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Ok(url) = url::Url::parse(line) else {
                continue;
            };
            let host = match (url.host_str(), url.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => continue,
            };
            let path = url.path().trim_matches('/');
            let user = decode(url.username());
            let matches = url.scheme() == self.protocol
                && host.eq_ignore_ascii_case(&self.host)
                && (path.is_empty() || self.path.as_deref().is_none_or(|p| p == path))
                && self.username.as_deref().is_none_or(|u| *u == *user);
            if !matches {
                continue;
            }
            let password = decode(url.password().unwrap_or(""));
            let mut out = Zeroizing::new(String::with_capacity(user.len() + password.len() + 20));
            out.push_str("username=");
            out.push_str(&user);
            out.push_str("\npassword=");
            out.push_str(&password);
            out.push('\n');
            return Some(out);
        }
        None
    }
}

/// A URL's user or password, percent-decoded, in memory that is wiped (decoded straight into
/// the buffer that is kept: no copy left behind).
fn decode(s: &str) -> Zeroizing<String> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
    match String::from_utf8(bytes) {
        Ok(text) => Zeroizing::new(text),
        // Not UTF-8 (git's protocol is text): the lossy text, the raw bytes wiped.
        Err(e) => {
            let raw = Zeroizing::new(e.into_bytes());
            Zeroizing::new(String::from_utf8_lossy(&raw).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_is_answered_like_the_store_helper_answers_it() {
        let file = "https://x-access-token:ghp%2Fsecret@github.com\n\
                    https://bob:pw@git.example.com:8443/team/repo.git\n";
        let ask = |text: &str| Request::parse(text).answer(file).map(|a| a.to_string());
        assert_eq!(
            ask("protocol=https\nhost=github.com\n\n").as_deref(),
            Some("username=x-access-token\npassword=ghp/secret\n")
        );
        assert_eq!(
            ask("protocol=https\nhost=git.example.com:8443\npath=team/repo.git\n").as_deref(),
            Some("username=bob\npassword=pw\n")
        );
        // Another port, another path, another user, another protocol: nothing.
        for miss in [
            "protocol=https\nhost=git.example.com\n",
            "protocol=https\nhost=git.example.com:8443\npath=other/repo.git\n",
            "protocol=https\nhost=github.com\nusername=alice\n",
            "protocol=http\nhost=github.com\n",
        ] {
            assert_eq!(ask(miss), None, "{miss}");
        }
    }
}
