//! The mount's rendered files (`--files FILES.toml`): after every refresh round, each file whose
//! secrets changed is rendered again from the values the tree holds, into locked memory, and
//! served as a new inode (what a rotation does), so a reader never sees half of two renderings
//! and one holding the old file keeps reading it.
//!
//! At start every problem fails the mount (fail closed); later a file that cannot be rendered
//! keeps its last good rendering and the problem is logged by name, once.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use super::fuse::SharedTree;
use super::memory::LockedPool;
use super::tree::{Changes, Contents};
use crate::render::{Listed, Recipe, RenderedFile};

/// The secrets a rendering was made from: name, version, and when that value was written.
type Inputs = Vec<(String, u64, i64)>;
use crate::secret::{SecretKind, SecretName};

/// The rendered files of a mount, and what each was last built from.
pub struct Renderer {
    files: Vec<RenderedFile>,
    /// Per file: the secrets of its current rendering, exactly.
    built_from: HashMap<String, Inputs>,
    /// Per file: the secrets of a set last left out (logged when it changes).
    left_out: HashMap<String, String>,
    /// Per file: the problem last logged, so an outage is logged once, not per round.
    failing: HashMap<String, String>,
    /// The kinds of the secrets the source lists (what built-ins are made from).
    kinds: BTreeMap<SecretName, SecretKind>,
}

impl Renderer {
    pub fn new(files: Vec<RenderedFile>) -> Self {
        Renderer {
            files,
            built_from: HashMap::new(),
            left_out: HashMap::new(),
            failing: HashMap::new(),
            kinds: BTreeMap::new(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.files.iter().map(|f| f.name.clone())
    }

    /// Each file's name and its own mode, if it has one.
    pub fn names_and_modes(&self) -> impl Iterator<Item = (String, Option<u16>)> + '_ {
        self.files.iter().map(|f| (f.name.clone(), f.mode))
    }

    /// Problems of a start: a rendered file's name that a secret the source lists also has.
    pub fn collisions(&self, listed: &[SecretName]) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| listed.iter().any(|n| n.as_str() == f.name))
            .map(|f| {
                format!(
                    "the rendered file \"{0}\" has the name of the secret \"{0}\"; rename the \
                     file in the files spec, or leave the secret out with --secret",
                    f.name
                )
            })
            .collect()
    }

    /// Forgets what each file was built from: the next refresh renders every file again (after
    /// the tree dropped them).
    pub fn forget(&mut self) {
        self.built_from.clear();
    }

    /// The kinds of the secrets the last round listed.
    pub fn set_kinds(&mut self, kinds: BTreeMap<SecretName, SecretKind>) {
        self.kinds = kinds;
    }

    /// Renders again every file whose secrets changed since its rendering (every file, the first
    /// time). With `strict` (the start), any problem is an error and nothing is served; after
    /// that a file that fails keeps its last good rendering and the problem is logged.
    pub fn refresh(&mut self, tree: &SharedTree, strict: bool) -> Result<Changes, Vec<String>> {
        if self.files.is_empty() {
            return Ok(Changes::default());
        }
        let started = std::time::Instant::now();
        let mut problems = Vec::new();
        // Rendered under the read lock (values are only read), stored and swapped in after.
        let mut built: Vec<(usize, zeroize::Zeroizing<Vec<u8>>, Inputs)> = Vec::new();
        {
            let tree = tree.read().unwrap_or_else(|e| e.into_inner());
            // What is served as a secret (not a rendered file, not a secret it shadows).
            let served = tree.served();
            let listed: Vec<Listed<'_>> = served
                .iter()
                .map(|s| {
                    let kind = self.kinds.get(&s.name).copied().unwrap_or_default();
                    (&s.name, kind)
                })
                .collect();
            for i in 0..self.files.len() {
                let uses = match self.files[i].uses(&listed) {
                    Ok(u) => u,
                    Err(e) => {
                        failed(&mut self.failing, &self.files[i], e, strict, &mut problems);
                        continue;
                    }
                };
                // A built-in made from one secret keeps the one it was first made from: another
                // of the kind appearing later must not stop its rotations.
                if let Recipe::Builtin { which, secret } = &self.files[i].recipe
                    && secret.is_none()
                    && let [one] = uses.as_slice()
                {
                    self.files[i].recipe = Recipe::Builtin {
                        which: *which,
                        secret: Some(one.clone()),
                    };
                }
                let file = &self.files[i];
                // Exact stamps: a secret deleted and created again is version 1 again.
                let inputs: Inputs = uses
                    .iter()
                    .filter_map(|n| {
                        let (version, written) = tree.secret_stamp(n.as_str())?;
                        Some((n.as_str().to_owned(), version, written))
                    })
                    .collect();
                let rendered_yet = tree.rendered_value(&file.name).is_some();
                if rendered_yet && self.built_from.get(&file.name) == Some(&inputs) {
                    continue;
                }
                match file.render(&listed, |n| {
                    tree.secret_value(n.as_str()).map(|(v, _)| v.as_ref())
                }) {
                    Ok(r) => {
                        let note = r.left_out.join("; ");
                        if self.left_out.get(&file.name) != Some(&note) {
                            if !note.is_empty() {
                                tracing::warn!(file = %file.name, problem = %note, "a secret cannot go into the file");
                            }
                            self.left_out.insert(file.name.clone(), note);
                        }
                        built.push((i, r.bytes, inputs));
                    }
                    Err(e) => failed(&mut self.failing, file, e, strict, &mut problems),
                }
            }
        }
        if strict && !problems.is_empty() {
            return Err(problems);
        }
        let slots = LockedPool::store(built.iter().map(|(_, b, _)| b.as_slice()))
            .map_err(|e| vec![format!("cannot hold a rendered file in memory: {e}")])?;
        let mut changes = Changes::default();
        let count = built.len();
        let mut tree = tree.write().unwrap_or_else(|e| e.into_inner());
        for ((i, _, inputs), slot) in built.into_iter().zip(slots) {
            let file = &self.files[i];
            let contents: Contents = inputs.iter().map(|(n, v, _)| (n.clone(), *v)).collect();
            changes.extend(tree.put_rendered(
                &file.name,
                slot,
                file.mode,
                contents,
                SystemTime::now(),
            ));
            if self.failing.remove(&file.name).is_some() {
                tracing::info!(file = %file.name, "rendered file built again");
            }
            let secrets = inputs
                .iter()
                .map(|(n, _, _)| n.as_str())
                .collect::<Vec<_>>();
            tracing::debug!(file = %file.name, secrets = %secrets.join(","), "file rendered");
            self.built_from.insert(file.name.clone(), inputs);
        }
        drop(tree);
        if count > 0 {
            let names: Vec<&str> = changes
                .added
                .iter()
                .chain(changes.replaced.iter().map(|(n, _)| n))
                .map(String::as_str)
                .take(5)
                .collect();
            tracing::info!(
                files = count,
                first = %names.join(","),
                elapsed_us = started.elapsed().as_micros() as u64,
                "files rendered"
            );
        }
        Ok(changes)
    }
}

/// Notes a file that could not be rendered: logged (after the start) when the problem is new.
fn failed(
    failing: &mut HashMap<String, String>,
    file: &RenderedFile,
    e: Vec<String>,
    strict: bool,
    all: &mut Vec<String>,
) {
    let text = e.join("; ");
    if !strict && failing.get(&file.name) != Some(&text) {
        tracing::warn!(file = %file.name, problem = %text, "cannot render the file; serving its last good rendering");
    }
    failing.insert(file.name.clone(), text);
    all.extend(e);
}
