//! What `--mask` matches against: the output unfolded, so a value's encodings are found however
//! a tool laid them out. Two foldings are undone, in one pass:
//!
//! - **Line breaks inside base64.** `base64` wraps at 76 columns and `openssl base64` at 64, so
//!   a value of 57 bytes or more comes out over several lines, the breaks wherever the columns
//!   fall. A break (`\n`, or `\r\n`, `\r\r\n` as terminals write it) is dropped when the line
//!   before it is all base64 characters, at least [`MIN_RUN`] of them, and a base64 character
//!   follows it: a wrapped line is exactly that, while ordinary output has spaces, `=` or dots on
//!   its lines (a training log's `loss=0.1234567890123456` is not a base64 line).
//! - **Percent-escapes.** `%HH` (either case) is read as the byte it stands for, so every flavour
//!   of URL encoding (all reserved bytes escaped or `/` kept, as Python's `quote()` does; upper-
//!   or lower-case hex) comes back to the value itself.
//!
//! The masker's patterns go through the same unfolding, so a value with line breaks or `%` of
//! its own is found as it is printed. Matches are found in the unfolded bytes and mapped back to
//! the output's own, which is what is written (with each match replaced).
//!
//! Most output has neither a long run before a line break nor a `%`: then the view is the text
//! itself and nothing is copied.

use zeroize::Zeroizing;

/// Base64 characters a line must hold (and nothing else) for its break to be dropped.
pub const MIN_RUN: usize = 16;

/// The line so far holds something other than base64 characters: its break stays.
pub const IMPURE: usize = usize::MAX;

/// The most `\r` a terminal's line break carries before its `\n`.
const MAX_CR: usize = 2;

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Where the unfolded bytes stop matching the text one for one: from unfolded byte `n` on, the
/// text is at `t`; when `escape`, byte `n` itself stood for three bytes of text (`%HH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    n: usize,
    t: usize,
    escape: bool,
}

/// A text as the matcher sees it.
#[derive(Default)]
pub struct View {
    /// The unfolded bytes; `None` when they are the text's own (up to `pending`).
    unfolded: Option<Zeroizing<Vec<u8>>>,
    marks: Vec<Mark>,
    /// The text from here on is not in the view yet: an escape or a line break the next chunk
    /// may complete (the text's length when there is none).
    pending: usize,
    /// Whether what is pending is a line break (else an escape, or nothing).
    pending_break: bool,
}

/// What is at `i` in `text`, as the unfolding reads it.
enum Step {
    /// A byte taken as it is.
    Byte,
    /// `%HH`: the byte it stands for.
    Escape(u8),
    /// A line break of this many bytes, dropped.
    Break(usize),
    /// The end of a chunk that the next one may turn into an escape or a break.
    Pending,
}

/// Reads `text` at `i`; `run` is how many base64 characters the line holds up to `i` ([`IMPURE`]
/// when it holds anything else), `complete` whether nothing follows the text.
fn step(text: &[u8], i: usize, run: usize, complete: bool) -> Step {
    match text[i] {
        b'%' => match (text.get(i + 1).copied(), text.get(i + 2).copied()) {
            (Some(h), Some(l)) => match (hex(h), hex(l)) {
                (Some(h), Some(l)) => Step::Escape(h * 16 + l),
                _ => Step::Byte,
            },
            (Some(h), None) if hex(h).is_some() && !complete => Step::Pending,
            (None, _) if !complete => Step::Pending,
            _ => Step::Byte,
        },
        b'\r' | b'\n' if run >= MIN_RUN && run != IMPURE => {
            let crs = text[i..].iter().take_while(|&&b| b == b'\r').count();
            let after = i + crs;
            match text.get(after) {
                Some(b'\n') if crs <= MAX_CR => match text.get(after + 1) {
                    Some(&c) if is_base64(c) => Step::Break(crs + 1),
                    None if !complete => Step::Pending,
                    _ => Step::Byte,
                },
                None if crs <= MAX_CR && !complete => Step::Pending,
                _ => Step::Byte,
            }
        }
        _ => Step::Byte,
    }
}

impl View {
    /// The view of `text`. `complete`: nothing follows it (a pattern, or the end of a stream),
    /// so an unfinished escape or break at its end is text like any other. `run`: the line's
    /// base64 characters just before it ([`IMPURE`]: the line holds other characters).
    pub fn of(text: &[u8], complete: bool, run: usize) -> View {
        // Most output has nothing to unfold: find out without copying.
        let first = first_fold(text, complete, run);
        let Some(first) = first else {
            return View {
                unfolded: None,
                marks: Vec::new(),
                pending: text.len(),
                pending_break: false,
            };
        };
        let mut out = Zeroizing::new(Vec::with_capacity(text.len()));
        out.extend_from_slice(&text[..first]);
        let mut marks = Vec::new();
        let mut run = run_at(text, first, run);
        let mut i = first;
        let mut pending = text.len();
        let mut pending_break = false;
        while i < text.len() {
            match step(text, i, run, complete) {
                Step::Byte => {
                    let b = text[i];
                    run = line_after(run, b);
                    out.push(b);
                    i += 1;
                }
                Step::Escape(b) => {
                    // One mark per position: an escape right after another replaces the mark
                    // the first left for the byte after it.
                    if marks.last().is_some_and(|m: &Mark| m.n == out.len()) {
                        marks.pop();
                    }
                    marks.push(Mark {
                        n: out.len(),
                        t: i,
                        escape: true,
                    });
                    out.push(b);
                    i += 3;
                    marks.push(Mark {
                        n: out.len(),
                        t: i,
                        escape: false,
                    });
                    run = IMPURE;
                }
                Step::Break(len) => {
                    i += len;
                    marks.push(Mark {
                        n: out.len(),
                        t: i,
                        escape: false,
                    });
                    run = 0;
                }
                Step::Pending => {
                    pending = i;
                    pending_break = text[i] != b'%';
                    break;
                }
            }
        }
        View {
            unfolded: Some(out),
            marks,
            pending,
            pending_break,
        }
    }

    /// A pattern unfolded as output would be: complete, after a line that holds `run` base64
    /// characters ([`IMPURE`]: other characters) before it.
    pub fn unfold_pattern(pattern: &[u8], run: usize) -> Zeroizing<Vec<u8>> {
        let view = View::of(pattern, true, run);
        Zeroizing::new(view.bytes(pattern).to_vec())
    }

    /// The bytes to match: the unfolded ones, or the text's own up to what is pending.
    pub fn bytes<'a>(&'a self, text: &'a [u8]) -> &'a [u8] {
        match &self.unfolded {
            Some(u) => u,
            None => &text[..self.pending],
        }
    }

    /// Where the text holds what is not in the view yet.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending
    }

    /// Where the text must be held back from, given that the view is held from `n`: a pending
    /// escape always waits (the byte it stands for may begin a value); a pending line break
    /// waits only with something before it that may continue past it.
    pub fn hold_from(&self, n: usize, len: usize) -> usize {
        if n < len {
            self.text_start(n)
        } else if self.pending_break {
            usize::MAX
        } else {
            self.pending
        }
    }

    /// The text position of unfolded byte `n` (of the view's end, for `n` at its length).
    pub fn text_start(&self, n: usize) -> usize {
        let len = self.unfolded.as_ref().map_or(self.pending, |u| u.len());
        if n >= len {
            return self.pending;
        }
        match self.marks.partition_point(|m| m.n <= n).checked_sub(1) {
            None => n,
            Some(k) => self.marks[k].t + (n - self.marks[k].n),
        }
    }

    /// The text position just past unfolded bytes `..end` (`end` > 0).
    pub fn text_end(&self, end: usize) -> usize {
        let last = end - 1;
        let escaped = self
            .marks
            .binary_search_by_key(&last, |m| m.n)
            .is_ok_and(|k| self.marks[k].escape);
        self.text_start(last) + if escaped { 3 } else { 1 }
    }
}

/// The line's state after byte `b`, from `run` before it.
fn line_after(run: usize, b: u8) -> usize {
    if b == b'\n' {
        0
    } else if is_base64(b) && run != IMPURE {
        run + 1
    } else {
        IMPURE
    }
}

/// The line's state at the end of `text`, `before` being its state before the text.
pub fn run_before(text: &[u8], before: usize) -> usize {
    run_at(text, text.len(), before)
}

/// The line's state at `at` in `text` (`before`: its state before the text): how many base64
/// characters it holds since its start, or [`IMPURE`].
fn run_at(text: &[u8], at: usize, before: usize) -> usize {
    let line = text[..at]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let body = &text[line..at];
    if !body.iter().all(|&b| is_base64(b)) {
        IMPURE
    } else if line == 0 {
        if before == IMPURE {
            IMPURE
        } else {
            before + body.len()
        }
    } else {
        body.len()
    }
}

/// The first position where the unfolding changes `text`, if any. One pass of `memchr` over the
/// text; at each line break only the line's end is looked at (a non-base64 character there,
/// which ordinary output has within a few bytes, settles it), so output with nothing to unfold
/// costs little more than the search itself.
fn first_fold(text: &[u8], complete: bool, before: usize) -> Option<usize> {
    let mut line_start = 0;
    for i in memchr::memchr3_iter(b'%', b'\n', b'\r', text) {
        let run = if text[i] == b'%' {
            IMPURE
        } else {
            let body = &text[line_start..i];
            if !body.iter().rev().all(|&b| is_base64(b)) {
                IMPURE
            } else if line_start == 0 {
                if before == IMPURE {
                    IMPURE
                } else {
                    before + body.len()
                }
            } else {
                body.len()
            }
        };
        if !matches!(step(text, i, run, complete), Step::Byte) {
            return Some(i);
        }
        if text[i] == b'\n' {
            line_start = i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unfolded(text: &str, complete: bool) -> (String, usize) {
        let v = View::of(text.as_bytes(), complete, 0);
        (
            String::from_utf8(v.bytes(text.as_bytes()).to_vec()).unwrap(),
            v.pending(),
        )
    }

    #[test]
    fn breaks_after_long_runs_and_escapes_are_undone() {
        let line = "QUJDREVGR0hJSktMTU5PUFFS"; // 24 base64 characters
        let text = format!("{line}\n{line}\r\n{line}\r\r\n{line}");
        assert_eq!(unfolded(&text, true).0, line.repeat(4));
        // Short runs, a break before a non-base64 character, text with spaces: kept.
        for kept in [
            "short\nline",
            &format!("{line}\n.next"),
            "a b c d e f g h i j\nk",
            &format!("key={line}\n{line}"),
            "loss=0.1234567890123456789\nstep",
        ] {
            assert_eq!(unfolded(kept, true).0, kept);
        }
        assert_eq!(unfolded("a%2Fb%2fc%41%zz%4", true).0, "a/b/cA%zz%4");
    }

    #[test]
    fn an_unfinished_escape_or_break_at_the_end_waits() {
        let line = "QUJDREVGR0hJSktMTU5PUFFS";
        assert_eq!(unfolded("x %4", false), ("x ".into(), 2));
        assert_eq!(unfolded("x %", false), ("x ".into(), 2));
        assert_eq!(unfolded(&format!("{line}\r"), false).1, line.len());
        assert_eq!(unfolded(&format!("{line}\n"), false).1, line.len());
        // After a short run a break is just text.
        assert_eq!(unfolded("short\n", false), ("short\n".into(), 6));
    }

    #[test]
    fn positions_map_back_to_the_text() {
        let line = "QUJDREVGR0hJSktMTU5PUFFS";
        let text = format!("{line}\r\n{line}%2F!");
        let v = View::of(text.as_bytes(), true, 0);
        let bytes = v.bytes(text.as_bytes()).to_vec();
        for (n, b) in bytes.iter().enumerate() {
            let t = v.text_start(n);
            if *b == b'/' {
                assert_eq!(&text[t..v.text_end(n + 1)], "%2F");
            } else {
                assert_eq!(text.as_bytes()[t], *b, "unfolded byte {n}");
                assert_eq!(v.text_end(n + 1), t + 1);
            }
        }
        assert_eq!(v.text_start(bytes.len()), text.len());
    }
}
