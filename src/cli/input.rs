//! Reading secret values: from a file, from piped stdin, or from a no-echo prompt on a terminal.
//! Never from argv. Buffers are allocated once at the limit so that reading never reallocates
//! and leaves copies of a value in freed memory.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, bail};
use nix::sys::termios::{self, LocalFlags, SetArg};
use zeroize::Zeroizing;

use crate::secret::{SecretName, SecretValue, ValueLimit};

/// What to do with a newline at the end of a piped or file value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrailingNewline {
    /// Keep the bytes as they are, with a warning that says so (the default: a value is never
    /// changed without being asked).
    #[default]
    Keep,
    /// Drop one trailing `\n` (or `\r\n`), as a terminal prompt does.
    Trim,
}

/// Reads a value for `name` from `file` (`-` or `None` means stdin).
pub fn read_value(
    file: Option<&Path>,
    name: &SecretName,
    limit: ValueLimit,
    newline: TrailingNewline,
) -> anyhow::Result<SecretValue> {
    let (mut bytes, from) = match file.filter(|p| p.as_os_str() != "-") {
        Some(path) => {
            let f = File::open(path)
                .with_context(|| format!("cannot open value file \"{}\"", path.display()))?;
            let bytes = read_capped(f, limit)
                .with_context(|| format!("cannot read value file \"{}\"", path.display()))?;
            (bytes, format!("file {}", path.display()))
        }
        // The prompt reads up to the newline and never includes it.
        None if io::stdin().is_terminal() => {
            return Ok(SecretValue::new(prompt(name, limit)?, limit)?);
        }
        None => (
            read_capped(io::stdin().lock(), limit).context("cannot read the value from stdin")?,
            "stdin".to_owned(),
        ),
    };
    if bytes.last() == Some(&b'\n') {
        match newline {
            TrailingNewline::Trim => {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            TrailingNewline::Keep => eprintln!(
                "warning: the value for \"{name}\" (from {from}) ends with a newline, which is \
                 stored as part of it; write values with printf '%s' rather than echo, or pass \
                 --trim-newline to drop it"
            ),
        }
    }
    Ok(SecretValue::new(bytes, limit)?)
}

/// Reads at most `limit + 1` bytes, so an oversized input is detected without reading it all.
fn read_capped(r: impl Read, limit: ValueLimit) -> io::Result<Zeroizing<Vec<u8>>> {
    let cap = limit.bytes() + 1;
    let mut buf = Zeroizing::new(Vec::with_capacity(cap));
    r.take(cap as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Restores the terminal's echo when dropped, even on an early return.
struct EchoOff<'a> {
    fd: std::io::StdinLock<'a>,
    saved: termios::Termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

fn prompt(name: &SecretName, limit: ValueLimit) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut stderr = io::stderr();
    write!(stderr, "value for {name} (input hidden): ")?;
    stderr.flush()?;
    let stdin = io::stdin().lock();
    let saved = termios::tcgetattr(stdin.as_fd()).context("cannot read terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    termios::tcsetattr(stdin.as_fd(), SetArg::TCSAFLUSH, &quiet)
        .context("cannot turn off terminal echo")?;
    let guard = EchoOff { fd: stdin, saved };
    let mut line = Zeroizing::new(Vec::with_capacity(limit.bytes() + 1));
    let mut byte = [0u8; 1];
    loop {
        // Straight from the descriptor: stdin's shared buffer would keep a copy of the value.
        match nix::unistd::read(guard.fd.as_fd(), &mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ if line.len() > limit.bytes() => break,
            _ => line.push(byte[0]),
        }
    }
    drop(guard);
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.is_empty() {
        bail!("no value entered for secret \"{name}\"");
    }
    Ok(line)
}
