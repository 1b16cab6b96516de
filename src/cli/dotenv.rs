//! `.env` files, read exactly as python-dotenv 1.2 reads them (`dotenv_values`), so that
//! `secret import --dotenv FILE` stores the values an application loading the same file with
//! python-dotenv sees. Pure: text in, entries and problems out.
//!
//! Written here rather than taken from the `dotenvy` crate, after comparing both on the same
//! files (`tests/it/cli_secret.rs` runs python-dotenv itself): dotenvy 0.15.7 expands `$NAME`
//! as well as `${NAME}`, so the password `pa$$word` became `pa`; it refuses unquoted values with
//! spaces (`D=two words`), which python-dotenv takes; and its parse error repeats the offending
//! line, value included, which must never reach a terminal or a log. The rules below are
//! python-dotenv's: `export` prefixes, `#` comments (after whitespace, in unquoted values),
//! single quotes (`\\` and `\'` escapes only), double quotes (`\\ \' \" \a \b \f \n \r \t \v`),
//! values spanning lines inside quotes, a line that cannot be parsed skipped with its number,
//! and `${NAME}` / `${NAME:-default}` expanded in every value from earlier entries, then the
//! environment (what python-dotenv's default `interpolate=True, override=True` does).

use std::collections::HashMap;

use zeroize::Zeroizing;

/// One `KEY=VALUE` statement.
pub struct Entry {
    pub key: String,
    /// `None` for a key without `=` (python-dotenv's `None`).
    pub value: Option<Zeroizing<String>>,
    /// The line the statement starts on (1-based).
    pub line: usize,
    /// Variables `${NAME}` in the value that were taken from the environment (names only).
    pub from_environment: Vec<String>,
}

/// What a file holds: its entries in order, and the lines that could not be parsed.
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub bad_lines: Vec<usize>,
}

/// Answers `${NAME}` from the environment.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Parses `text`; `env` answers `${NAME}` for names no earlier entry set, `None` to keep
/// `${...}` as written (`interpolate=False`).
pub fn parse(text: &str, env: Option<Lookup<'_>>) -> Parsed {
    let mut reader = Reader {
        s: text,
        pos: 0,
        line: 1,
    };
    let mut entries = Vec::new();
    let mut bad_lines = Vec::new();
    loop {
        reader.skip_while(char::is_whitespace);
        if reader.at_end() {
            break;
        }
        let line = reader.line;
        match binding(&mut reader) {
            Ok(Some((key, value))) => entries.push(Entry {
                key,
                value,
                line,
                from_environment: Vec::new(),
            }),
            Ok(None) => {}
            Err(()) => {
                bad_lines.push(line);
                reader.skip_while(|c| c != '\r' && c != '\n');
                reader.newline();
            }
        }
    }
    if let Some(env) = env {
        interpolate(&mut entries, env);
    }
    Parsed { entries, bad_lines }
}

struct Reader<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

fn horizontal(c: char) -> bool {
    c.is_whitespace() && c != '\r' && c != '\n'
}

impl Reader<'_> {
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        // \r\n counts once: the \n of a pair does not add a line.
        if c == '\n' && !self.s[..self.pos - 1].ends_with('\r') || c == '\r' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_while(&mut self, f: impl Fn(char) -> bool) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        self.pos - start
    }

    /// One `\r\n`, `\n` or `\r`, if there.
    fn newline(&mut self) -> bool {
        match self.peek() {
            Some('\r') => {
                self.bump();
                if self.peek() == Some('\n') {
                    self.bump();
                }
                true
            }
            Some('\n') => {
                self.bump();
                true
            }
            _ => false,
        }
    }
}

type Binding = Option<(String, Option<Zeroizing<String>>)>;

fn binding(r: &mut Reader<'_>) -> Result<Binding, ()> {
    // `export` followed by horizontal whitespace is a prefix, not a key.
    if let Some(after) = r.rest().strip_prefix("export")
        && after.starts_with(horizontal)
    {
        r.pos += "export".len();
        r.skip_while(horizontal);
    }
    let key = match r.peek() {
        Some('#') => None,
        Some('\'') => {
            let (pos, line) = (r.pos, r.line);
            r.bump();
            let start = r.pos;
            let n = r.skip_while(|c| c != '\'');
            if n == 0 || r.peek() != Some('\'') {
                // Like a regex that does not match: nothing consumed.
                (r.pos, r.line) = (pos, line);
                return Err(());
            }
            let key = r.s[start..r.pos].to_owned();
            r.bump();
            Some(key)
        }
        _ => {
            let start = r.pos;
            if r.skip_while(|c| c != '=' && c != '#' && !c.is_whitespace()) == 0 {
                return Err(());
            }
            Some(r.s[start..r.pos].to_owned())
        }
    };
    r.skip_while(horizontal);
    let value = if r.peek() == Some('=') {
        r.bump();
        r.skip_while(horizontal);
        Some(value(r)?)
    } else {
        None
    };
    // An optional comment, then the end of the line.
    r.skip_while(horizontal);
    if r.peek() == Some('#') {
        r.skip_while(|c| c != '\r' && c != '\n');
    }
    if !(r.at_end() || r.newline()) {
        return Err(());
    }
    Ok(key.map(|k| (k, value)))
}

fn value(r: &mut Reader<'_>) -> Result<Zeroizing<String>, ()> {
    match r.peek() {
        Some(q @ ('\'' | '"')) => {
            let (pos, line) = (r.pos, r.line);
            r.bump();
            let mut raw = Zeroizing::new(String::new());
            loop {
                match r.bump() {
                    // No closing quote: like a regex that does not match, nothing consumed, so
                    // the next line is read again as a statement of its own.
                    None => {
                        (r.pos, r.line) = (pos, line);
                        return Err(());
                    }
                    Some('\\') => {
                        let Some(next) = r.bump() else {
                            (r.pos, r.line) = (pos, line);
                            return Err(());
                        };
                        raw.push('\\');
                        raw.push(next);
                    }
                    Some(c) if c == q => break,
                    Some(c) => raw.push(c),
                }
            }
            Ok(unescape(&raw, q == '"'))
        }
        None | Some('\r' | '\n') => Ok(Zeroizing::new(String::new())),
        Some(_) => {
            let start = r.pos;
            r.skip_while(|c| c != '\r' && c != '\n');
            let part = &r.s[start..r.pos];
            // A comment starts at whitespace followed by '#'; then trailing whitespace goes.
            let cut = part
                .char_indices()
                .find(|&(i, c)| {
                    c.is_whitespace()
                        && part[i..]
                            .trim_start_matches(char::is_whitespace)
                            .starts_with('#')
                })
                .map_or(part.len(), |(i, _)| i);
            Ok(Zeroizing::new(part[..cut].trim_end().to_owned()))
        }
    }
}

/// python-dotenv's escape decoding: in double quotes `\\ \' \" \a \b \f \n \r \t \v`, in
/// single quotes `\\` and `\'`; any other backslash stays as written.
fn unescape(raw: &str, double: bool) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(raw.len()));
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let decoded = match chars.peek() {
            Some('\\') => Some('\\'),
            Some('\'') => Some('\''),
            Some('"') if double => Some('"'),
            Some('a') if double => Some('\x07'),
            Some('b') if double => Some('\x08'),
            Some('f') if double => Some('\x0c'),
            Some('n') if double => Some('\n'),
            Some('r') if double => Some('\r'),
            Some('t') if double => Some('\t'),
            Some('v') if double => Some('\x0b'),
            _ => None,
        };
        match decoded {
            Some(d) => {
                out.push(d);
                chars.next();
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `${NAME}` and `${NAME:-default}` in every value: an earlier entry's value, else `env`, else
/// the default, else nothing.
fn interpolate(entries: &mut [Entry], env: Lookup<'_>) {
    let mut seen: HashMap<String, Option<Zeroizing<String>>> = HashMap::new();
    for e in entries.iter_mut() {
        if let Some(v) = &e.value {
            let mut out = Zeroizing::new(String::with_capacity(v.len()));
            let mut rest: &str = v;
            while let Some(at) = rest.find("${") {
                out.push_str(&rest[..at]);
                let body = &rest[at + 2..];
                let name_len = body.find(['}', ':']).unwrap_or(body.len());
                let name = &body[..name_len];
                let (default, used) = match body[name_len..].chars().next() {
                    Some('}') => (None, name_len + 1),
                    Some(':') if body[name_len + 1..].starts_with('-') => {
                        let d = &body[name_len + 2..];
                        match d.find('}') {
                            Some(end) => (Some(&d[..end]), name_len + 2 + end + 1),
                            None => {
                                out.push('$');
                                rest = &rest[at + 1..];
                                continue;
                            }
                        }
                    }
                    _ => {
                        // Not a variable: the '$' is literal, and scanning goes on after it.
                        out.push('$');
                        rest = &rest[at + 1..];
                        continue;
                    }
                };
                match seen.get(name) {
                    Some(Some(earlier)) => out.push_str(earlier),
                    Some(None) => {}
                    None => match env(name) {
                        Some(from_env) => {
                            out.push_str(&Zeroizing::new(from_env));
                            e.from_environment.push(name.to_owned());
                        }
                        None => out.push_str(default.unwrap_or("")),
                    },
                }
                rest = &body[used..];
            }
            out.push_str(rest);
            e.value = Some(out);
        }
        seen.insert(e.key.clone(), e.value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses with `HOME=/home/me` as the environment; `key=value` per entry, `key` alone for
    /// one without `=`, and `!N` for a bad line N.
    fn check(text: &str, expected: &[&str]) {
        let env = |n: &str| (n == "HOME").then(|| "/home/me".to_owned());
        let parsed = parse(text, Some(&env));
        let mut got: Vec<String> = parsed
            .entries
            .iter()
            .map(|e| match &e.value {
                Some(v) => format!("{}={}", e.key, v.as_str()),
                None => e.key.clone(),
            })
            .collect();
        got.extend(parsed.bad_lines.iter().map(|l| format!("!{l}")));
        assert_eq!(got, expected, "{text:?}");
    }

    #[test]
    fn python_dotenv_rules() {
        check("A=plain\nexport B=exported\n", &["A=plain", "B=exported"]);
        check("# comment\n\n  A = spaced  \n", &["A=spaced"]);
        check("A=x #comment\nB=x#kept", &["A=x", "B=x#kept"]);
        check("A=two words here", &["A=two words here"]);
        check("A=pa$$word\nB=$HOME", &["A=pa$$word", "B=$HOME"]);
        check(
            r#"A="d \"q\" \n \\ \t \x41""#,
            &["A=d \"q\" \n \\ \t \\x41"],
        );
        check(r"A='s \n \' \\'", &[r"A=s \n ' \"]);
        check("A=\"multi\nline\"\nB=after", &["A=multi\nline", "B=after"]);
        check("A=\nB", &["A=", "B"]);
        check("'quoted key'=1", &["quoted key=1"]);
        check("A='it''s'\nB=ok", &["B=ok", "!1"]);
        check("A=\"unterminated\nB=after", &["B=after", "!1"]);
        check("A=1\r\nB=2\r\n", &["A=1", "B=2"]);
        check("A=é ünïcode", &["A=é ünïcode"]);
    }

    #[test]
    fn variables_expand_as_python_dotenv_expands_them() {
        check(
            "A=${HOME}/x\nB=\"${A}-${NOPE:-def}${NOPE}\"\nC='${A}'\nD=${unclosed",
            &[
                "A=/home/me/x",
                "B=/home/me/x-def",
                "C=/home/me/x",
                "D=${unclosed",
            ],
        );
        let env = |n: &str| (n == "HOME").then(|| "/home/me".to_owned());
        let parsed = parse("A=${HOME}\nB=${A}", Some(&env));
        assert_eq!(parsed.entries[0].from_environment, ["HOME"]);
        assert!(parsed.entries[1].from_environment.is_empty());
        let literal = parse("A=${HOME}", None);
        assert_eq!(
            literal.entries[0].value.as_deref().map(String::as_str),
            Some("${HOME}")
        );
    }

    #[test]
    fn line_numbers_count_multiline_values() {
        let parsed = parse("A=\"1\n2\"\n\nB=x\nC='open\n", None);
        let lines: Vec<usize> = parsed.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 4]);
        assert_eq!(parsed.bad_lines, [5]);
    }
}
