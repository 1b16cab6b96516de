//! Rendered files: files built from secrets in the formats tools expect (`authorized_keys`,
//! git's credential store, a Hugging Face token file, a config template with the password
//! inside), for the mount (`--files FILES.toml`) and the launcher (`[files]` in a job spec).
//!
//! Pure: the caller reads the template files and hands over the secrets; nothing here does IO.
//!
//! The template language is placeholders and escaping filters only: `{{ secret "NAME" }}`,
//! `{{ secret "NAME" | json }}` (filters chain left to right), and `{{ "{{" }}` for a literal.
//! No logic, no file or environment access, no way to reach a secret the template does not
//! name. It is parsed here by hand rather than with a template engine (minijinja, tera,
//! handlebars) because every engine's point is what this language must not have (conditions,
//! loops, includes, environment lookups, filters that print context), and the whole grammar is
//! one tag of three parts: `parse_template` is about 80 lines. Nor would a crate be faster:
//! rendering 1,000 files on a rotation takes 5.5 ms a round, locked memory included
//! (`scripts/bench-render`, BENCHMARKS.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret::{SecretKind, SecretName, reserve_zeroized, ssh_public_key_fields};

/// One `[files."NAME"]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// A built-in format: `authorized_keys`, `git-credentials`, `huggingface-token`,
    /// `ngc-config`, `docker-config`.
    pub builtin: Option<String>,
    /// A template file, relative to the file that names it.
    pub template: Option<PathBuf>,
    /// The template itself, inline: what a node agent's volume gives (its attributes are text;
    /// there is no directory of theirs to read a template from).
    pub text: Option<String>,
    /// For a built-in built from one secret: which (else the one of its kind).
    pub secret: Option<String>,
    /// Read bits only: "0400", "0440", "0444" (default: the mount's mode).
    pub mode: Option<String>,
    /// The launcher: the variable that gets the file's path.
    pub env: Option<String>,
}

/// A `--files FILES.toml` file: only `[files."NAME"]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSpec {
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

/// The built-in formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Every `ssh-public-key` secret, one line each, the secret's name as the comment.
    AuthorizedKeys,
    /// git's credential store: `https://x-access-token:TOKEN@github.com` per `github` secret.
    GitCredentials,
    /// The token alone, as `HF_TOKEN_PATH` expects it, from the `huggingface` secret.
    HuggingfaceToken,
    /// The NGC CLI's `~/.ngc/config` with the `ngc` secret as its API key.
    NgcConfig,
    /// A Docker `config.json` logging in to NGC's registry (nvcr.io) with the `ngc` secret.
    DockerConfig,
}

impl Builtin {
    pub const ALL: [Builtin; 5] = [
        Builtin::AuthorizedKeys,
        Builtin::GitCredentials,
        Builtin::HuggingfaceToken,
        Builtin::NgcConfig,
        Builtin::DockerConfig,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::AuthorizedKeys => "authorized_keys",
            Builtin::GitCredentials => "git-credentials",
            Builtin::HuggingfaceToken => "huggingface-token",
            Builtin::NgcConfig => "ngc-config",
            Builtin::DockerConfig => "docker-config",
        }
    }

    /// The kind of secret it is built from.
    pub fn kind(self) -> SecretKind {
        match self {
            Builtin::AuthorizedKeys => SecretKind::SshPublicKey,
            Builtin::GitCredentials => SecretKind::Github,
            Builtin::HuggingfaceToken => SecretKind::Huggingface,
            Builtin::NgcConfig | Builtin::DockerConfig => SecretKind::Ngc,
        }
    }

    /// Whether it holds every secret of its kind (else exactly one).
    pub fn is_set(self) -> bool {
        matches!(self, Builtin::AuthorizedKeys | Builtin::GitCredentials)
    }
}

/// The escaping filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// A complete JSON string literal, quotes included.
    Json,
    /// A double-quoted YAML scalar, quotes included.
    Yaml,
    /// One single-quoted POSIX shell word.
    Shell,
    /// Percent-encoding of everything but RFC 3986's unreserved characters.
    Url,
    /// Standard base64, padded.
    Base64,
    /// The bytes as they are (the default).
    Raw,
}

impl Filter {
    fn parse(s: &str) -> Option<Filter> {
        Some(match s {
            "json" => Filter::Json,
            "yaml" => Filter::Yaml,
            "shell" => Filter::Shell,
            "url" => Filter::Url,
            "base64" => Filter::Base64,
            "raw" => Filter::Raw,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Filter::Json => "json",
            Filter::Yaml => "yaml",
            Filter::Shell => "shell",
            Filter::Url => "url",
            Filter::Base64 => "base64",
            Filter::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Secret {
        name: SecretName,
        filters: Vec<Filter>,
        line: usize,
    },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As the files spec names it, for messages.
    shown: String,
    pieces: Vec<Piece>,
}

/// How a file is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    Builtin {
        which: Builtin,
        secret: Option<SecretName>,
    },
    Template(Template),
}

/// One rendered file of a mount or a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub name: String,
    pub recipe: Recipe,
    /// Permission bits (read bits only), when the entry sets them.
    pub mode: Option<u16>,
    pub env: Option<String>,
}

/// A secret as the renderer sees it before any value is read: its name and kind.
pub type Listed<'a> = (&'a SecretName, SecretKind);

/// The first problem with a rendered file's name, if any: it becomes one file name in the mount
/// (or the name of a memory file).
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name == "." || name == ".." {
        Some("it is not a file name")
    } else if name.len() > 240 {
        // A memory file's name (`secretfs:NAME`) may be at most 249 bytes.
        Some("it is longer than 240 bytes")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@'))
    {
        Some("it may hold only letters, digits and . _ - + @")
    } else {
        None
    }
}

/// Read bits only, owner's included: the files are read-only, as every file of the mount.
/// (The rule is the mount's own, `secret::file_mode`.)
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode {s:?} is not octal digits such as \"0400\""))?;
    crate::secret::file_mode(mode)
}

/// Like [`load`], each entry on its own: the files that load, and every problem of the others,
/// so that a caller can report them with problems only it can find (a file named like a
/// secret, a template naming a missing one), all at once.
pub fn load_each(
    entries: &BTreeMap<String, FileEntry>,
    base: &Path,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> (Vec<RenderedFile>, Vec<String>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for (name, entry) in entries {
        let one = BTreeMap::from([(name.clone(), entry.clone())]);
        match load(&one, base, &read) {
            Ok(loaded) => files.extend(loaded),
            Err(more) => problems.extend(more),
        }
    }
    (files, problems)
}

/// Checks every entry and parses its template (read with `read`, given `base` joined with the
/// entry's relative path: it must stay inside `base`, see `launch::resolve::read_template`);
/// every problem at once, each naming its file.
pub fn load(
    entries: &BTreeMap<String, FileEntry>,
    base: &Path,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Vec<RenderedFile>, Vec<String>> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for (name, entry) in entries {
        let at = format!("[files.{name:?}]");
        if let Some(p) = name_problem(name) {
            problems.push(format!("{at}: {p}"));
        }
        let mode = match entry.mode.as_deref().map(parse_mode) {
            Some(Err(e)) => {
                problems.push(format!("{at}: {e}"));
                None
            }
            Some(Ok(m)) => Some(m),
            None => None,
        };
        let secret = match entry.secret.as_deref().map(SecretName::parse) {
            Some(Err(e)) => {
                problems.push(format!("{at}: secret: {e}"));
                None
            }
            Some(Ok(n)) => Some(n),
            None => None,
        };
        let recipe = match (&entry.builtin, &entry.template, &entry.text) {
            (None, None, Some(text)) => {
                if secret.is_some() {
                    problems.push(format!(
                        "{at}: a template names its secrets itself; remove secret ="
                    ));
                }
                match parse_template(&format!("[files.{name:?}].text"), text) {
                    Ok(t) => Recipe::Template(t),
                    Err(errors) => {
                        problems.extend(errors.into_iter().map(|e| format!("{at}: {e}")));
                        continue;
                    }
                }
            }
            (Some(b), None, None) => {
                let Some(which) = Builtin::ALL.into_iter().find(|x| x.as_str() == b) else {
                    problems.push(format!(
                        "{at}: unknown builtin {b:?}; the built-ins are {}",
                        builtin_list()
                    ));
                    continue;
                };
                if which.is_set() && secret.is_some() {
                    problems.push(format!(
                        "{at}: {b} holds every {} the identity may use; it takes no secret = \
                         (use --secret on the mount, or a template, to choose)",
                        which.kind().label()
                    ));
                }
                Recipe::Builtin { which, secret }
            }
            (None, Some(path), None) => {
                // Inside the spec's directory only: a files spec must not be a way to serve
                // `/proc/self/environ`, a key file or a token file to a workload.
                if path.is_absolute()
                    || !path
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
                {
                    problems.push(format!(
                        "{at}: template {:?} must be a relative path inside the files spec's \
                         directory, without \"..\"",
                        path.display()
                    ));
                    continue;
                }
                if secret.is_some() {
                    problems.push(format!(
                        "{at}: a template names its secrets itself; remove secret ="
                    ));
                }
                let full = base.join(path);
                match read(&full) {
                    Ok(text) => match parse_template(&path.display().to_string(), &text) {
                        Ok(t) => Recipe::Template(t),
                        Err(errors) => {
                            problems.extend(errors.into_iter().map(|e| format!("{at}: {e}")));
                            continue;
                        }
                    },
                    Err(e) => {
                        problems.push(format!(
                            "{at}: cannot read the template {}: {e}",
                            full.display()
                        ));
                        continue;
                    }
                }
            }
            _ => {
                problems.push(format!(
                    "{at}: give exactly one of builtin = \"...\" (one of {}), template = \"PATH\" \
                     or text = \"...\" (the template inline)",
                    builtin_list()
                ));
                continue;
            }
        };
        files.push(RenderedFile {
            name: name.clone(),
            recipe,
            mode,
            env: entry.env.clone(),
        });
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems)
    }
}

fn builtin_list() -> String {
    Builtin::ALL.map(Builtin::as_str).join(", ")
}

/// Parses a template: text, and `{{ ... }}` tags; every problem at once, with its line.
pub fn parse_template(shown: &str, text: &str) -> Result<Template, Vec<String>> {
    let mut pieces = Vec::new();
    let mut problems = Vec::new();
    let mut rest = text;
    // Counted as the text is consumed, not from the start for every tag.
    let mut line = 1;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        line += rest[..open].matches('\n').count();
        let inner_start = open + 2;
        let Some(close) = rest[inner_start..].find("}}") else {
            problems.push(format!(
                "{shown}, line {line}: \"{{{{\" is not closed by \"}}}}\" (for a literal \
                 \"{{{{\", write {{{{ \"{{{{\" }}}})"
            ));
            rest = "";
            break;
        };
        let tag = rest[inner_start..inner_start + close].trim();
        match parse_tag(tag) {
            Ok(piece) => pieces.push(match piece {
                Tag::Literal(s) => Piece::Text(s.to_owned()),
                Tag::Secret(name, filters) => Piece::Secret {
                    name,
                    filters,
                    line,
                },
            }),
            Err(e) => {
                // The tag as written, cut short: a runaway tag may hold the rest of the file.
                let cut = tag.char_indices().nth(60).map_or(tag, |(i, _)| &tag[..i]);
                let more = if cut.len() < tag.len() { " ..." } else { "" };
                problems.push(format!("{shown}, line {line}: {{{{ {cut}{more} }}}}: {e}"));
                if problems.len() >= 20 {
                    problems.push(format!("{shown}: more problems follow; fix these first"));
                    break;
                }
            }
        }
        let consumed = inner_start + close + 2;
        line += rest[open..consumed].matches('\n').count();
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    if problems.is_empty() {
        Ok(Template {
            shown: shown.to_owned(),
            pieces,
        })
    } else {
        Err(problems)
    }
}

enum Tag<'a> {
    Literal(&'a str),
    Secret(SecretName, Vec<Filter>),
}

/// `"text"`, or `secret "NAME"` followed by `| filter`s.
fn parse_tag(tag: &str) -> Result<Tag<'_>, String> {
    const FORM: &str = "a tag is {{ secret \"NAME\" }}, optionally with filters \
                        ({{ secret \"NAME\" | json }}), or a literal such as {{ \"{{\" }}";
    if let Some(lit) = tag.strip_prefix('"') {
        return match lit.strip_suffix('"') {
            Some(inner) if !inner.contains('"') => Ok(Tag::Literal(inner)),
            _ => Err(format!("not a literal; {FORM}")),
        };
    }
    let mut parts = tag.split('|');
    let head = parts.next().unwrap_or("").trim();
    let Some(quoted) = head.strip_prefix("secret") else {
        let word = head.split_whitespace().next().unwrap_or("");
        return Err(format!(
            "{word:?} is not something a template can use: only secrets it names; {FORM}"
        ));
    };
    let quoted = quoted.trim();
    let name = match quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(n) => SecretName::parse(n).map_err(|e| e.to_string())?,
        None => {
            return Err(format!(
                "the secret's name must be in double quotes; {FORM}"
            ));
        }
    };
    let mut filters = Vec::new();
    for f in parts {
        let f = f.trim();
        match Filter::parse(f) {
            Some(x) => filters.push(x),
            None => {
                return Err(format!(
                    "unknown filter {f:?}; the filters are json, yaml, shell, url, base64, raw"
                ));
            }
        }
    }
    Ok(Tag::Secret(name, filters))
}

/// Bytes being built that may hold values: grown through `reserve_zeroized`, so no copy is left
/// behind in freed memory.
#[derive(Default)]
struct Out(Zeroizing<Vec<u8>>);

impl Out {
    fn push(&mut self, bytes: &[u8]) {
        reserve_zeroized(&mut self.0, bytes.len());
        self.0.extend_from_slice(bytes);
    }
}

/// A value without the trailing newline a pasted token may carry.
fn trimmed(value: &[u8]) -> &[u8] {
    let v = value.strip_suffix(b"\n").unwrap_or(value);
    v.strip_suffix(b"\r").unwrap_or(v)
}

/// `value` percent-encoded (everything but RFC 3986's unreserved characters), in zeroized
/// memory: the `url` filter's, and the form `--mask` looks for.
pub fn percent_encoded(value: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Out::default();
    percent_encode(value, &mut out);
    out.0
}

fn percent_encode(value: &[u8], out: &mut Out) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(&[b]);
        } else {
            out.push(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// `prefix` and `n` in `digits` upper-case hex digits, written without a heap copy (a
/// `format!` would leave the escaped character of a value in freed memory).
fn push_hex(out: &mut Out, prefix: &[u8], n: u32, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut buf = [0u8; 8];
    for (i, b) in buf[..digits].iter_mut().enumerate() {
        *b = HEX[((n >> (4 * (digits - 1 - i))) & 15) as usize];
    }
    out.push(prefix);
    out.push(&buf[..digits]);
    buf.fill(0);
}

fn json_string(text: &str, out: &mut Out) {
    out.push(b"\"");
    let mut buf = [0u8; 4];
    for c in text.chars() {
        match c {
            '"' => out.push(b"\\\""),
            '\\' => out.push(b"\\\\"),
            '\n' => out.push(b"\\n"),
            '\r' => out.push(b"\\r"),
            '\t' => out.push(b"\\t"),
            // JSON allows these raw, JavaScript (a config read by `eval`-like loaders) does not.
            '\u{2028}' | '\u{2029}' => push_hex(out, b"\\u", c as u32, 4),
            c if (c as u32) < 0x20 || c == '\u{7f}' => push_hex(out, b"\\u", c as u32, 4),
            c => out.push(c.encode_utf8(&mut buf).as_bytes()),
        }
    }
    out.push(b"\"");
}

/// A YAML double-quoted scalar: every character YAML 1.2 does not print as itself, and every
/// line break (which a double-quoted scalar would fold), escaped.
fn yaml_string(text: &str, out: &mut Out) {
    out.push(b"\"");
    let mut buf = [0u8; 4];
    for c in text.chars() {
        let esc: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\0' => Some(b"\\0"),
            '\u{7}' => Some(b"\\a"),
            '\u{8}' => Some(b"\\b"),
            '\t' => Some(b"\\t"),
            '\n' => Some(b"\\n"),
            '\u{b}' => Some(b"\\v"),
            '\u{c}' => Some(b"\\f"),
            '\r' => Some(b"\\r"),
            '\u{1b}' => Some(b"\\e"),
            '\u{85}' => Some(b"\\N"),
            '\u{2028}' => Some(b"\\L"),
            '\u{2029}' => Some(b"\\P"),
            _ => None,
        };
        match esc {
            Some(e) => out.push(e),
            None => {
                let n = c as u32;
                if n < 0x20 || (0x7f..=0x9f).contains(&n) {
                    push_hex(out, b"\\x", n, 2);
                } else if matches!(n, 0xfeff | 0xfffe | 0xffff) {
                    push_hex(out, b"\\u", n, 4);
                } else {
                    out.push(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
    out.push(b"\"");
}

/// Applies `filters` in order; the last one's output is appended to `out`.
fn apply_filters(value: &[u8], filters: &[Filter], out: &mut Out) -> Result<(), String> {
    let mut current = Zeroizing::new(value.to_vec());
    for f in filters {
        let mut next = Out::default();
        let text = || {
            std::str::from_utf8(&current).map_err(|_| {
                format!(
                    "the value is not UTF-8 text, which the {} filter needs; put base64 before it \
                     ({{{{ secret \"...\" | base64 | {} }}}})",
                    f.as_str(),
                    f.as_str()
                )
            })
        };
        match f {
            Filter::Raw => next.push(&current),
            Filter::Base64 => next.push(
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&current[..]))
                    .as_bytes(),
            ),
            Filter::Url => percent_encode(&current, &mut next),
            Filter::Json => json_string(text()?, &mut next),
            Filter::Yaml => yaml_string(text()?, &mut next),
            Filter::Shell => {
                if current.contains(&0) {
                    return Err(
                        "the value holds a NUL byte, which no shell word can; use base64".into(),
                    );
                }
                next.push(b"'");
                for part in current.split(|&b| b == b'\'').enumerate() {
                    if part.0 > 0 {
                        next.push(b"'\\''");
                    }
                    next.push(part.1);
                }
                next.push(b"'");
            }
        }
        current = next.0;
    }
    out.push(&current);
    Ok(())
}

impl RenderedFile {
    /// The secrets the file is built from, given those the identity may use now (by name and
    /// kind): a template's references (all of them, found or not), every secret of a set
    /// built-in's kind, or the one of a single one's. Problems name the file.
    pub fn uses(&self, listed: &[Listed<'_>]) -> Result<Vec<SecretName>, Vec<String>> {
        match &self.recipe {
            Recipe::Template(t) => {
                let mut names: Vec<SecretName> = t
                    .pieces
                    .iter()
                    .filter_map(|p| match p {
                        Piece::Secret { name, .. } => Some(name.clone()),
                        Piece::Text(_) => None,
                    })
                    .collect();
                names.sort();
                names.dedup();
                Ok(names)
            }
            Recipe::Builtin { which, secret } => {
                let of_kind: Vec<&SecretName> = listed
                    .iter()
                    .filter(|(_, k)| *k == which.kind())
                    .map(|(n, _)| *n)
                    .collect();
                if which.is_set() {
                    let mut names: Vec<SecretName> = of_kind.into_iter().cloned().collect();
                    names.sort();
                    return Ok(names);
                }
                if let Some(s) = secret {
                    return match listed.iter().find(|(n, _)| *n == s) {
                        Some((_, k)) if *k == which.kind() => Ok(vec![s.clone()]),
                        Some((_, k)) => Err(vec![format!(
                            "{}: secret \"{s}\" is a {}, not a {}",
                            self.name,
                            k.label(),
                            which.kind().label()
                        )]),
                        None => Err(vec![format!(
                            "{}: secret \"{s}\" not found or not visible to this identity",
                            self.name
                        )]),
                    };
                }
                match of_kind.as_slice() {
                    [one] => Ok(vec![(*one).clone()]),
                    [] => Err(vec![format!(
                        "{}: no {} secret is visible to this identity (create one with \
                         \"secretfs secret create --kind {}\")",
                        self.name,
                        which.kind().label(),
                        which.kind().as_str()
                    )]),
                    several => Err(vec![format!(
                        "{}: several {} secrets are visible ({}); choose one with secret = \"NAME\"",
                        self.name,
                        which.kind().label(),
                        several
                            .iter()
                            .map(|n| format!("\"{n}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )]),
                }
            }
        }
    }

    /// The file's bytes, from `listed` (what the identity may use now) and `value` (the value of
    /// a name `uses` returned). A template's reference to a secret that is not there is a
    /// problem with its line; every problem at once.
    pub fn render<'v>(
        &self,
        listed: &[Listed<'_>],
        value: impl Fn(&SecretName) -> Option<&'v [u8]>,
    ) -> Result<Rendered, Vec<String>> {
        let mut out = Out::default();
        let mut problems = Vec::new();
        let mut left_out = Vec::new();
        match &self.recipe {
            Recipe::Template(t) => {
                for p in &t.pieces {
                    match p {
                        Piece::Text(s) => out.push(s.as_bytes()),
                        Piece::Secret {
                            name,
                            filters,
                            line,
                        } => {
                            let found = listed.iter().any(|(n, _)| *n == name);
                            match value(name).filter(|_| found) {
                                Some(v) => {
                                    if let Err(e) = apply_filters(v, filters, &mut out) {
                                        problems.push(format!(
                                            "{}, line {line}: secret \"{name}\": {e}",
                                            t.shown
                                        ));
                                    }
                                }
                                None => problems.push(format!(
                                    "{}, line {line}: secret \"{name}\" not found or not visible \
                                     to this identity",
                                    t.shown
                                )),
                            }
                        }
                    }
                }
            }
            Recipe::Builtin { which, .. } => {
                let names = self.uses(listed)?;
                let mut values = Vec::new();
                for n in &names {
                    match value(n) {
                        Some(v) => values.push((n, v)),
                        None => {
                            problems.push(format!("{}: secret \"{n}\" has no value", self.name))
                        }
                    }
                }
                if let Err(e) = builtin(*which, &values, &mut out, &mut left_out) {
                    problems.push(format!("{}: {e}", self.name));
                }
            }
        }
        if problems.is_empty() {
            Ok(Rendered {
                bytes: out.0,
                left_out: left_out
                    .into_iter()
                    .map(|e| format!("{}: {e}; left out", self.name))
                    .collect(),
            })
        } else {
            Err(problems)
        }
    }
}

/// A file's rendering, and the secrets of a set that could not go in (named, for a warning).
pub struct Rendered {
    pub bytes: Zeroizing<Vec<u8>>,
    pub left_out: Vec<String>,
}

/// A token that goes into a line-based format: printable ASCII without spaces (what every
/// provider's tokens are), so no line break of any reader (`\n`, U+2028, NEL) and no field
/// separator can come from a value.
fn one_line<'a>(name: &SecretName, value: &'a [u8]) -> Result<&'a [u8], String> {
    let v = trimmed(value);
    if v.is_empty() || !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(format!(
            "secret \"{name}\" is empty or holds something besides printable ASCII (a space, a \
             newline inside?), which this format cannot carry"
        ));
    }
    Ok(v)
}

/// Writes a built-in; a secret of a set that cannot go in is left out (the others still
/// count: one bad token must not keep a revoked one in the file), and named in `left_out`.
fn builtin(
    which: Builtin,
    values: &[(&SecretName, &[u8])],
    out: &mut Out,
    left_out: &mut Vec<String>,
) -> Result<(), String> {
    match which {
        Builtin::AuthorizedKeys => {
            for (name, v) in values {
                match ssh_public_key_fields(v) {
                    // The secret's name as the comment: `ssh` logs and `ssh-keygen -l` show it.
                    Some((kind, body)) => {
                        out.push(kind.as_bytes());
                        out.push(b" ");
                        out.push(body.as_bytes());
                        out.push(b" ");
                        out.push(name.as_str().as_bytes());
                        out.push(b"\n");
                    }
                    // Never a line from a value that is not a key: it could carry options.
                    None => {
                        out.push(
                            format!("# {name}: not an OpenSSH public key, left out\n").as_bytes(),
                        );
                        left_out.push(format!("secret \"{name}\" is not an OpenSSH public key"));
                    }
                }
            }
        }
        Builtin::GitCredentials => {
            for (name, v) in values {
                match one_line(name, v) {
                    Ok(token) => {
                        out.push(b"https://x-access-token:");
                        percent_encode(token, out);
                        out.push(b"@github.com\n");
                    }
                    Err(e) => left_out.push(e),
                }
            }
        }
        Builtin::HuggingfaceToken => {
            let (name, v) = values.first().ok_or("no huggingface secret")?;
            // As `huggingface-cli login` writes it: the token, no newline.
            out.push(one_line(name, v)?);
        }
        Builtin::NgcConfig => {
            let (name, v) = values.first().ok_or("no ngc secret")?;
            out.push(b"[CURRENT]\napikey = ");
            out.push(one_line(name, v)?);
            out.push(b"\nformat_type = ascii\n");
        }
        Builtin::DockerConfig => {
            let (name, v) = values.first().ok_or("no ngc secret")?;
            // NGC's registry takes the literal user `$oauthtoken` with the API key as password.
            let mut pair = Out::default();
            pair.push(b"$oauthtoken:");
            pair.push(one_line(name, v)?);
            let auth =
                Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&pair.0[..]));
            out.push(b"{\"auths\": {\"nvcr.io\": {\"auth\": \"");
            out.push(auth.as_bytes());
            out.push(b"\"}}}\n");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
