//! Tidy: the mechanical invariants of ARCHITECTURE.md, checked on the text of `src/` (as
//! rust-analyzer's tidy tests check theirs), so a layering mistake fails `cargo test` with the
//! file and line instead of waiting for a reviewer to notice.
//!
//! The scanner below is hand-written, not `syn` or a lexer crate: this is a test, and all it has to
//! know is which text is code and which is a comment or a literal; a dependency would be built for
//! it on every run. It tokenizes each file (identifiers and punctuation, with line numbers; every
//! comment dropped, every string, char and number literal one opaque token), and the rules match
//! on tokens, so a rule word in a comment, a doc comment or a message is never a violation.

use std::fs;
use std::path::{Path, PathBuf};

/// The pure core: no IO, so none of the crates that do it.
const PURE_CORE: &[&str] = &[
    "src/secret.rs",
    "src/secret/",
    "src/crypto.rs",
    "src/crypto/",
    "src/auth.rs",
    "src/fs/tree.rs",
    "src/fs/tree/",
    "src/launch/args.rs",
    "src/launch/spec.rs",
    "src/launch/plan.rs",
    "src/launch/plan/",
    "src/render.rs",
    "src/render/",
    "src/identity.rs",
    "src/identity/",
    "src/source/choose.rs",
    "src/source/choose/",
];
const IO_CRATES: &[&str] = &["fuser", "sqlx", "tokio", "axum", "reqwest"];

/// Where `anyhow` may appear: the CLI and the binary's `main`. (`src/bin/secretfs-run.rs` does
/// not need it: the launcher has its own error type and exit codes.)
const ANYHOW_ALLOWED: &[&str] = &["src/cli/", "src/main.rs"];

/// The only file that may replace the process.
const EXEC_ALLOWED: &[&str] = &["src/launch/exec.rs"];
/// The exec family as nix and libc name it.
const EXEC_CALLS: &[&str] = &[
    "execv", "execve", "execvp", "execvpe", "execveat", "fexecve",
];

/// The only files with `unsafe` code (Cargo.toml denies `unsafe_code` everywhere else): locked
/// memory, and the exec boundary's one reset of SIGPIPE (which only `sigaction` can undo).
const UNSAFE_ALLOWED: &[&str] = &["src/fs/memory.rs", "src/launch/exec.rs"];

/// Where the store's types may be named: the store itself and the service, its one door.
/// (`src/lib.rs` declares `pub mod store`; a declaration is not a use, so it needs no entry.)
const STORE_ALLOWED: &[&str] = &["src/store/", "src/service/"];

/// The store's types shared on purpose, through the service's re-exports: the rows its callers
/// show (audit records, tokens, users, grants), its error, and the local store's paths. The rest
/// of the store (the `Store` trait, `Batch`, `Op`, `Vault`, `StoredSecret`, the SQL) stays behind
/// the service; a re-export of anything else is a violation where it is written.
const STORE_SHARED: &[&str] = &[
    "AuditAction",
    "AuditQuery",
    "AuditRecord",
    "DEFAULT_WORKSPACE",
    "Grant",
    "StoreError",
    "TargetKind",
    "TokenRecord",
    "User",
    "valid_account_name",
    "local",
    "LocalError",
    "LocalPaths",
    "OpenMode",
    "local_user",
];

/// The client side speaks typed structs, never untyped JSON.
const TYPED_JSON: &[&str] = &["src/client.rs", "src/cli/", "src/source/"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    /// A string, byte string, raw string, char or number literal; its content is never matched.
    Literal,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Splits Rust source into tokens, dropping comments (`//`, nested `/* */`, doc comments) and
/// collapsing literals. Good enough for code that compiles; it does not validate anything.
fn tokens(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
            out.push(Token {
                tok: Tok::Literal,
                line: start_line,
            });
        } else if ch == '\'' {
            // A char literal ('x', '\n', '\u{1F600}', '\'') or a lifetime or label ('a).
            if at(i + 1) == '\\' {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token {
                    tok: Tok::Literal,
                    line: start_line,
                });
            } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
                i += 3;
                out.push(Token {
                    tok: Tok::Literal,
                    line: start_line,
                });
            } else {
                out.push(Token {
                    tok: Tok::Punct('\''),
                    line: start_line,
                });
                i += 1;
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Literal,
                line: start_line,
            });
        } else if ch.is_alphabetic() || ch == '_' {
            let begin = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[begin..i].iter().collect();
            let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
            let quoted_prefix = matches!(word.as_str(), "b" | "c");
            if raw_prefix && (at(i) == '"' || (at(i) == '#' && matches!(at(i + 1), '"' | '#'))) {
                // r"...", r#"..."#: no escapes; ends at a quote followed by as many #.
                let mut hashes = 0;
                while at(i) == '#' {
                    hashes += 1;
                    i += 1;
                }
                i += 1;
                loop {
                    if i >= c.len() {
                        break;
                    }
                    if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                        i += 1 + hashes;
                        break;
                    }
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Literal,
                    line: start_line,
                });
            } else if word == "r" && at(i) == '#' {
                // A raw identifier: r#type is the identifier `type`.
                let begin = i + 1;
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(c[begin..i].iter().collect()),
                    line: start_line,
                });
            } else if quoted_prefix && at(i) == '"' {
                i = skip_string(&c, i + 1, &mut line);
                out.push(Token {
                    tok: Tok::Literal,
                    line: start_line,
                });
            } else if word == "b" && at(i) == '\'' {
                i += if at(i + 1) == '\\' { 3 } else { 2 };
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token {
                    tok: Tok::Literal,
                    line: start_line,
                });
            } else {
                out.push(Token {
                    tok: Tok::Ident(word),
                    line: start_line,
                });
            }
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line: start_line,
            });
            i += 1;
        }
    }
    out
}

/// Skips a (byte) string's content from just after its opening quote; returns the index after
/// its closing quote.
fn skip_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    *line += 1;
                }
                i += 2;
            }
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// One broken invariant: where, which rule, what was found.
#[derive(Debug, PartialEq)]
struct Violation {
    path: String,
    line: usize,
    rule: &'static str,
    found: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: found {}",
            self.path, self.line, self.rule, self.found
        )
    }
}

/// Whether `path` (relative, `/`-separated) is one of `scope`'s files or under one of its
/// directories (entries ending in `/`).
fn in_scope(path: &str, scope: &[&str]) -> bool {
    scope.iter().any(|s| {
        if s.ends_with('/') {
            path.starts_with(s)
        } else {
            path == *s
        }
    })
}

/// A view of a file's tokens with the questions the rules ask.
struct Code {
    toks: Vec<Token>,
    /// For each token, whether it is inside a `use` declaration, and the index that declaration
    /// starts at.
    in_use: Vec<Option<usize>>,
}

impl Code {
    fn new(src: &str) -> Code {
        let toks = tokens(src);
        let mut in_use = vec![None; toks.len()];
        let mut i = 0;
        while i < toks.len() {
            // `use<'a>` (precise capturing in an `impl Trait`) is not a declaration.
            if toks[i].tok == ident("use") && toks.get(i + 1).map(|t| &t.tok) != Some(&punct('<')) {
                let start = i;
                while i < toks.len() && toks[i].tok != punct(';') {
                    in_use[i] = Some(start);
                    i += 1;
                }
            }
            i += 1;
        }
        Code { toks, in_use }
    }

    fn is(&self, i: usize, tok: &Tok) -> bool {
        self.toks.get(i).is_some_and(|t| t.tok == *tok)
    }

    fn word(&self, i: usize) -> Option<&str> {
        match self.toks.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(w)) => Some(w),
            _ => None,
        }
    }

    fn prev(&self, i: usize) -> Option<&Tok> {
        i.checked_sub(1).map(|j| &self.toks[j].tok)
    }

    /// `ident ::`, not after a `.` (a method called with a turbofish, `x.store::<T>()`).
    fn path_segment(&self, i: usize) -> bool {
        self.is(i + 1, &punct(':'))
            && self.is(i + 2, &punct(':'))
            && self.prev(i) != Some(&punct('.'))
    }

    /// Named in a `use` declaration, and not as the new name after `as`.
    fn imported(&self, i: usize) -> bool {
        self.in_use[i].is_some() && self.prev(i) != Some(&ident("as"))
    }

    /// Whether the `use` declaration holding token `i` is a `pub use` (a re-export).
    fn in_pub_use(&self, i: usize) -> bool {
        self.in_use[i].is_some_and(|start| {
            start >= 1
                && (self.word(start - 1) == Some("pub") || self.prev(start) == Some(&punct(')')))
        })
    }

    /// The names a `use` declaration brings in after token `i` (`store`): the last segment of
    /// each path, or the new name after `as`; `self` counts as the module itself.
    fn use_names_after(&self, i: usize) -> Vec<String> {
        let Some(start) = self.in_use[i] else {
            return Vec::new();
        };
        let mut names = Vec::new();
        let mut k = i + 1;
        while k < self.toks.len() && self.in_use[k] == Some(start) {
            if let Some(w) = self.word(k).filter(|w| *w != "as") {
                let last = !self.is(k + 1, &punct(':')) && self.word(k + 1) != Some("as");
                if last && self.prev(k) != Some(&ident("as")) || self.prev(k) == Some(&ident("as"))
                {
                    names.push(w.to_owned());
                }
            }
            k += 1;
        }
        names
    }

    /// Every index of identifier `w`.
    fn find<'a>(&'a self, w: &'a str) -> impl Iterator<Item = usize> + 'a {
        (0..self.toks.len()).filter(move |&i| self.word(i) == Some(w))
    }

    fn line(&self, i: usize) -> usize {
        self.toks[i].line
    }
}

fn ident(w: &str) -> Tok {
    Tok::Ident(w.to_owned())
}

fn punct(c: char) -> Tok {
    Tok::Punct(c)
}

/// Every violation in one file, `path` relative to the crate root.
fn check_file(path: &str, src: &str) -> Vec<Violation> {
    let code = Code::new(src);
    let mut out = Vec::new();
    let mut report = |i: usize, rule: &'static str, found: String| {
        out.push(Violation {
            path: path.to_owned(),
            line: code.line(i),
            rule,
            found,
        })
    };

    if in_scope(path, PURE_CORE) {
        for krate in IO_CRATES {
            for i in code.find(krate) {
                let extern_crate = code.prev(i) == Some(&ident("crate"))
                    && i >= 2
                    && code.word(i - 2) == Some("extern");
                if code.path_segment(i) || code.imported(i) || extern_crate {
                    report(
                        i,
                        "rule 1 (the pure core imports no fuser, sqlx, tokio, axum or reqwest)",
                        format!("`{krate}`"),
                    );
                }
            }
        }
    }

    if in_scope(path, PURE_CORE) {
        // The standard library's IO: files, processes and the environment at all; of `io` and
        // `net`, what reads, writes or connects (their error and address types are plain data:
        // a reader passed in may fail with an `io::Error`).
        for i in code.find("std") {
            let module = code.word(i + 3).unwrap_or_default();
            let item = code.word(i + 6).unwrap_or_default();
            let io = match module {
                "fs" | "process" | "env" => true,
                "io" => !matches!(item, "Result" | "Error" | "ErrorKind"),
                "net" => !item.starts_with("Ip") && !item.starts_with("SocketAddr"),
                _ => false,
            };
            if code.path_segment(i) && io {
                report(
                    i,
                    "rule 1b (the pure core does no IO: no std::fs, process or env, no reading, \
                     writing or connecting through std::io or std::net)",
                    format!("`std::{module}`"),
                );
            }
        }
    }

    if !in_scope(path, ANYHOW_ALLOWED) {
        for i in code.find("anyhow") {
            report(
                i,
                "rule 2 (anyhow only in src/cli/ and src/main.rs)",
                "`anyhow`".into(),
            );
        }
    }

    if !in_scope(path, EXEC_ALLOWED) {
        for call in EXEC_CALLS {
            for i in code.find(call) {
                report(
                    i,
                    "rule 3 (exec only in src/launch/exec.rs)",
                    format!("`{call}`"),
                );
            }
        }
        // std's `CommandExt::exec()` is an execve too.
        for i in code.find("exec") {
            if code.prev(i) == Some(&punct('.'))
                && code.is(i + 1, &punct('('))
                && code.is(i + 2, &punct(')'))
            {
                report(
                    i,
                    "rule 3 (exec only in src/launch/exec.rs)",
                    "`.exec()`".into(),
                );
            }
        }
    }

    if !in_scope(path, UNSAFE_ALLOWED) {
        for i in code.find("unsafe") {
            let what = match code.word(i + 1) {
                Some(w @ ("fn" | "impl" | "trait" | "extern")) => format!("`unsafe {w}`"),
                _ if code.is(i + 1, &punct('{')) => "an `unsafe` block".into(),
                _ => "`unsafe`".into(),
            };
            report(
                i,
                "rule 4 (unsafe only in src/fs/memory.rs and src/launch/exec.rs)",
                what,
            );
        }
        // Lifting the crate's `unsafe_code = "deny"` is the same as writing unsafe code; tightening
        // it (`deny`, `forbid`) is not.
        for i in code.find("unsafe_code") {
            let level = (i.saturating_sub(8)..i)
                .rev()
                .filter_map(|j| code.word(j))
                .find(|w| matches!(*w, "allow" | "expect" | "warn" | "deny" | "forbid"));
            if let Some(level @ ("allow" | "expect" | "warn")) = level {
                report(
                    i,
                    "rule 4 (unsafe only in src/fs/memory.rs and src/launch/exec.rs)",
                    format!("`{level}(unsafe_code)`"),
                );
            }
        }
    }

    // A re-export of the store outside it (the service's `pub use crate::store::{...}`) names only
    // the shared rows: the rule follows what is re-exported, not only the text `store::`.
    if !path.starts_with("src/store/") {
        for i in code.find("store") {
            if code.imported(i) && code.in_pub_use(i) {
                for name in code.use_names_after(i) {
                    if !STORE_SHARED.contains(&name.as_str()) {
                        report(
                            i,
                            "rule 5b (the service re-exports only the store rows ARCHITECTURE.md \
                             lists as shared)",
                            format!("`{name}`"),
                        );
                    }
                }
            }
        }
    }

    if !in_scope(path, STORE_ALLOWED) {
        for i in code.find("store") {
            if code.path_segment(i) || code.imported(i) {
                report(
                    i,
                    "rule 5 (store types only in src/store/ and src/service/)",
                    "`store::`".into(),
                );
            }
        }
    }

    if in_scope(path, TYPED_JSON) {
        for i in code.find("json") {
            if code.is(i + 1, &punct('!'))
                && (code.is(i + 2, &punct('('))
                    || code.is(i + 2, &punct('['))
                    || code.is(i + 2, &punct('{')))
            {
                report(
                    i,
                    "rule 6 (no serde_json::Value or json! in src/client.rs, src/cli/, src/source/)",
                    "`json!`".into(),
                );
            }
        }
        for i in code.find("serde_json") {
            // serde_json::Value, serde_json::value::Value, and `use serde_json::{.., Value}`.
            let mut j = i;
            let mut hit = None;
            while code.path_segment(j) {
                j += 3;
                if code.word(j) == Some("Value") {
                    hit = Some(j);
                }
            }
            if hit.is_none()
                && let Some(start) = code.in_use[i]
            {
                hit = (i + 1..code.toks.len())
                    .take_while(|&k| code.in_use[k] == Some(start))
                    .find(|&k| code.word(k) == Some("Value") && code.imported(k));
            }
            if let Some(k) = hit {
                report(
                    k,
                    "rule 6 (no serde_json::Value or json! in src/client.rs, src/cli/, src/source/)",
                    "`serde_json::Value`".into(),
                );
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `src/` file as (relative path, text).
fn sources() -> Vec<(String, String)> {
    rust_files(&root().join("src"))
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{rel}: {e}"));
            (rel, text)
        })
        .collect()
}

#[test]
fn the_source_tree_keeps_the_mechanical_invariants_of_architecture_md() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        violations.extend(check_file(&path, &text));
    }
    violations.sort_by(|a, b| (a.rule, &a.path, a.line).cmp(&(b.rule, &b.path, b.line)));
    let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
    assert!(
        violations.is_empty(),
        "{} violations of ARCHITECTURE.md's invariants (see its Bird's-eye view and Invariants):\n{}",
        violations.len(),
        list.join("\n")
    );
}

/// A rule about files that are gone passes for nothing: every file and directory the rules name
/// must exist, so a move makes this fail until the rule follows it.
#[test]
fn every_path_the_rules_name_exists() {
    let sources = sources();
    let mut missing = Vec::new();
    for scope in [
        PURE_CORE,
        ANYHOW_ALLOWED,
        EXEC_ALLOWED,
        UNSAFE_ALLOWED,
        STORE_ALLOWED,
        TYPED_JSON,
    ] {
        for entry in scope {
            // `src/secret/`, `src/crypto/`, ... hold the core's unit tests; a directory may be
            // absent only if its `.rs` sibling exists (then it has simply not been split yet).
            let found = sources.iter().any(|(p, _)| in_scope(p, &[*entry]))
                || (entry.ends_with('/')
                    && root()
                        .join(format!("{}.rs", entry.trim_end_matches('/')))
                        .is_file());
            if !found {
                missing.push(*entry);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named by a tidy rule but not in src/: {missing:?}"
    );
}

/// The scanner on its own: what is code, what is not.
#[test]
fn the_scanner_sees_code_and_skips_comments_and_literals() {
    let words = |src: &str| -> Vec<String> {
        tokens(src)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(w) => Some(w),
                _ => None,
            })
            .collect()
    };
    let none: [&str; 0] = [];
    assert_eq!(words("// tokio::spawn\n/// anyhow\n//! unsafe"), none);
    assert_eq!(
        words("/* a /* nested unsafe */ still a comment */ x"),
        ["x"]
    );
    assert_eq!(words(r#"let s = "use tokio; \" unsafe {";"#), ["let", "s"]);
    assert_eq!(
        words(r###"r#"a "quoted" unsafe {"# b"execve" c"anyhow" x"###),
        ["x"]
    );
    assert_eq!(words(r#"let q = '"'; anyhow"#), ["let", "q", "anyhow"]);
    assert_eq!(
        words(r"let e = '\''; let n = b'\n'; y"),
        ["let", "e", "let", "n", "y"]
    );
    assert_eq!(
        words("fn f<'a>(x: &'a str) -> &'a str { x }"),
        ["fn", "f", "a", "x", "a", "str", "a", "str", "x"]
    );
    assert_eq!(words("r#type 0x1f_u8 1.5e3"), ["type"]);
    // Line numbers count the lines inside comments and literals.
    let t = tokens("/*\n\n*/ \"a\nb\" r#\"\n\"# z");
    assert_eq!(
        t.last(),
        Some(&Token {
            tok: ident("z"),
            line: 5
        })
    );
}

/// The rules on small inputs: a rule word in a comment or a string is not a violation; in code,
/// in the wrong file, it is.
#[test]
fn a_rule_word_is_a_violation_in_code_only() {
    let found = |path: &str, src: &str| -> Vec<(usize, String)> {
        let mut v: Vec<_> = check_file(path, src)
            .into_iter()
            .map(|v| (v.line, v.found))
            .collect();
        v.sort();
        v
    };
    let none: Vec<(usize, String)> = vec![];

    // 1: the pure core.
    assert_eq!(
        found("src/secret.rs", "//! tokio::spawn\nlet s = \"use sqlx;\";"),
        none
    );
    assert_eq!(
        found(
            "src/secret.rs",
            "use tokio::sync;\n#[tokio::test]\nfn t() {}"
        ),
        [(1, "`tokio`".into()), (2, "`tokio`".into())]
    );
    assert_eq!(
        found("src/launch/plan/tests.rs", "use {fuser};"),
        [(1, "`fuser`".into())]
    );
    assert_eq!(found("src/secret.rs", "let tokio = 1;"), none);
    assert_eq!(found("src/fs/mount.rs", "use tokio::sync;"), none);

    // 2: anyhow.
    assert_eq!(found("src/cli/mod.rs", "anyhow::bail!(\"x\")"), none);
    assert_eq!(
        found("src/server.rs", "// anyhow\n\nlet r: anyhow::Result<()>;"),
        [(3, "`anyhow`".into())]
    );

    // 3: exec.
    assert_eq!(
        found("src/launch/exec.rs", "nix::unistd::execve(a, b, c)"),
        none
    );
    assert_eq!(
        found("src/launch/resolve.rs", "/// ready for `execve`\nfn f() {}"),
        none
    );
    assert_eq!(
        found(
            "src/fs/guard.rs",
            "nix::unistd::execvp(a, b);\ncmd.exec();\nexec::exec(x)"
        ),
        [(1, "`execvp`".into()), (2, "`.exec()`".into())]
    );

    // 4: unsafe.
    assert_eq!(
        found("src/fs/memory.rs", "#![allow(unsafe_code)]\nunsafe { f() }"),
        none
    );
    assert_eq!(
        found(
            "src/fs/tree.rs",
            "let allow_unsafe_env = \"unsafe {\"; // unsafe fn"
        ),
        none
    );
    assert_eq!(
        found(
            "src/fs/fuse.rs",
            "unsafe { f() }\nunsafe fn g() {}\nunsafe impl Send for X {}\n#[allow(unsafe_code)]\n#![forbid(unsafe_code)]"
        ),
        [
            (1, "an `unsafe` block".into()),
            (2, "`unsafe fn`".into()),
            (3, "`unsafe impl`".into()),
            (4, "`allow(unsafe_code)`".into()),
        ]
    );

    // 5: the store.
    assert_eq!(
        found("src/service/mod.rs", "use crate::store::Batch;"),
        none
    );
    assert_eq!(found("src/lib.rs", "pub mod store;"), none);
    assert_eq!(
        found(
            "src/api/mod.rs",
            "self.store.get(); flag.store(true); x.store::<u8>()"
        ),
        none
    );
    assert_eq!(
        found(
            "src/api/error.rs",
            "use crate::store::StoreError;\nuse crate::{secret, store};\nfn f(e: crate::store::StoreError) {}"
        ),
        [
            (1, "`store::`".into()),
            (2, "`store::`".into()),
            (3, "`store::`".into())
        ]
    );

    // 6: untyped JSON on the client side.
    assert_eq!(found("src/api/secrets.rs", "json!({})"), none);
    assert_eq!(
        found("src/client.rs", "let json = 1; json != 2; // json!({})"),
        none
    );
    assert_eq!(
        found(
            "src/cli/remote.rs",
            "use serde_json::{Value, json};\nlet v: serde_json::Value = json!({});\nserde_json::value::Value::Null"
        ),
        [
            (1, "`serde_json::Value`".into()),
            (2, "`json!`".into()),
            (2, "`serde_json::Value`".into()),
            (3, "`serde_json::Value`".into()),
        ]
    );
    assert_eq!(
        found("src/source/mod.rs", "serde_json::from_slice::<Answer>(b)"),
        none
    );
}

/// The `.rs` paths the codemap of ARCHITECTURE.md names, resolved: a bullet that opens with a
/// directory (`` - `fs/`: ``) names its files relative to it (`tree.rs` is `src/fs/tree.rs`); a
/// name with a `/` in it (`api/metrics.rs`, `bin/secretfs-run.rs`), or in a bullet that opens with
/// none, is relative to `src/`. Bullets about what is outside `src/` (`tests/`, `scripts/`, ...)
/// are skipped.
fn codemap_paths(architecture: &str) -> Vec<String> {
    let start = architecture
        .find("## Codemap")
        .expect("ARCHITECTURE.md has a Codemap section");
    let section = &architecture[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut paths = Vec::new();
    let mut dir: Option<String> = None;
    // Until the first bullet: the section's prose, which names no file of the map.
    let mut outside = true;
    for line in section[..end].lines() {
        let spans: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        if let Some(rest) = line.strip_prefix("- ") {
            let opening = rest
                .strip_prefix('`')
                .and_then(|r| r.split_once('`'))
                .map(|(first, after)| (first, after.starts_with(':')));
            dir = None;
            outside = false;
            if let Some((first, true)) = opening
                && first.ends_with('/')
            {
                outside = !root().join("src").join(first).is_dir();
                dir = Some(first.to_owned());
            } else if let Some((first, _)) = opening {
                outside = ["tests/", ".config/", "scripts/", "fuzz/", "examples/"]
                    .iter()
                    .any(|o| first.starts_with(o));
            }
        }
        if outside {
            continue;
        }
        for span in spans {
            if !span.ends_with(".rs") || span.contains(' ') {
                continue;
            }
            let path = match &dir {
                Some(d) if !span.contains('/') => format!("src/{d}{span}"),
                _ => format!("src/{span}"),
            };
            paths.push(path);
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// ARCHITECTURE.md's codemap stays the map: every file it names exists, and every `src/` file
/// (unit-test files beside the code aside) is named in it.
#[test]
fn the_codemap_names_every_source_file_and_only_those() {
    let text = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let named = codemap_paths(&text);
    let files: Vec<String> = sources()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !p.ends_with("/tests.rs"))
        .collect();
    let gone: Vec<&String> = named.iter().filter(|p| !files.contains(p)).collect();
    let unnamed: Vec<&String> = files.iter().filter(|p| !named.contains(p)).collect();
    assert!(
        gone.is_empty() && unnamed.is_empty(),
        "ARCHITECTURE.md's codemap names files that do not exist: {gone:?}; and leaves out: \
         {unnamed:?}"
    );
}

#[test]
fn codemap_paths_resolve_by_the_bullets_directory() {
    let map = "## Codemap\n\n- `main.rs`: x, `bin/secretfs-run.rs`.\n- `fs/`: `tree.rs` (`Tree`),\n  \
               `mount.rs`, and `api/metrics.rs`.\n- `tests/it/` (`support/deadline.rs`)\n\n## Next\n- `a.rs`\n";
    assert_eq!(
        codemap_paths(map),
        [
            "src/api/metrics.rs",
            "src/bin/secretfs-run.rs",
            "src/fs/mount.rs",
            "src/fs/tree.rs",
            "src/main.rs"
        ]
    );
}

#[test]
fn the_pure_core_may_name_io_types_but_not_do_io() {
    let flagged = |src: &str| !check_file("src/secret.rs", src).is_empty();
    assert!(flagged("fn f() { let _ = std::fs::read(\"x\"); }"));
    assert!(flagged("use std::io::Read;"));
    assert!(flagged("fn f() { std::process::exit(1) }"));
    assert!(flagged(
        "fn f() -> Option<String> { std::env::var(\"X\").ok() }"
    ));
    assert!(flagged(
        "fn f() { let _ = std::net::TcpStream::connect(\"a:1\"); }"
    ));
    assert!(!flagged("fn f(r: impl Fn() -> std::io::Result<String>) {}"));
    assert!(!flagged("fn f(ip: std::net::IpAddr) {}"));
    // Outside the core, the same code is fine.
    assert!(check_file("src/source/mod.rs", "use std::io::Read;").is_empty());
}

#[test]
fn a_re_export_of_the_store_names_only_shared_rows() {
    let rule = |src: &str| -> Vec<String> {
        check_file("src/service/mod.rs", src)
            .into_iter()
            .filter(|v| v.rule.starts_with("rule 5b"))
            .map(|v| v.found)
            .collect()
    };
    assert!(rule("pub use crate::store::{AuditRecord, StoreError};").is_empty());
    assert!(rule("pub use crate::store::local::{LocalPaths, OpenMode};").is_empty());
    assert_eq!(rule("pub use crate::store::{Batch, User};"), ["`Batch`"]);
    assert_eq!(rule("pub use crate::store::Vault as V;"), ["`V`"]);
    // Not a re-export: the service's own use of the store is its business.
    assert!(rule("use crate::store::{Batch, Op};").is_empty());
}

/// Every `FILE.rs::TEST` a document names (`tests/it/` unless the path starts with `src/` or
/// `tests/`), as (document, reference).
fn test_references() -> Vec<(&'static str, String)> {
    let mut refs = Vec::new();
    for doc in [
        "SECURITY.md",
        "ARCHITECTURE.md",
        "README.md",
        "BENCHMARKS.md",
    ] {
        let text = fs::read_to_string(root().join(doc)).unwrap();
        for (at, _) in text.match_indices(".rs::") {
            let start = text[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '/'))
                .map_or(0, |i| i + 1);
            let end = text[at + 5..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |i| at + 5 + i);
            let r = &text[start..end];
            // The placeholder of the convention itself (`tests/it/FILE.rs::TEST`).
            if !r.ends_with("::TEST") {
                refs.push((doc, r.to_owned()));
            }
        }
    }
    refs
}

/// A claim that points at a test is only as good as the pointer: every test the documents name
/// exists, by that name, in that file, so a renamed or moved test makes this fail until the
/// document follows it.
#[test]
fn every_test_a_document_names_exists() {
    let refs = test_references();
    assert!(
        refs.len() >= 60,
        "SECURITY.md names its tests; found only {} references",
        refs.len()
    );
    let mut missing = Vec::new();
    for (doc, r) in &refs {
        let (file, test) = r.split_once(".rs::").unwrap();
        let path = if file.starts_with("src/") || file.starts_with("tests/") {
            root().join(format!("{file}.rs"))
        } else {
            root().join(format!("tests/it/{file}.rs"))
        };
        let found = fs::read_to_string(&path).is_ok_and(|text| {
            text.contains(&format!("fn {test}()")) || text.contains(&format!("fn {test}<"))
        });
        if !found {
            missing.push(format!("{doc}: {r} (looked in {})", path.display()));
        }
    }
    assert!(
        missing.is_empty(),
        "tests named in the documents that do not exist:\n{}",
        missing.join("\n")
    );
}
