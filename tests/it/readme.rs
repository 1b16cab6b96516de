//! The README's command blocks, run in order as one shell session on a scratch machine
//! (`readme_machine.sh`: namespaces of its own, secrets.example.com being itself), so the
//! walk-through cannot drift from what the binary does. A block that needs what no test machine
//! has (a cluster, a Docker engine, systemd as PID 1) starts with a visible
//! `# skipped by tests/it/readme.rs: WHY` line; it is skipped and counted. Besides every command
//! succeeding, the `# secretfs: ...` lines the README shows as output must be what the commands
//! printed, and no value the walk-through stores may appear in what it printed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Running, bin, fuse_available, private_ca, unique_canary};

const SKIP: &str = "# skipped by tests/it/readme.rs: ";
/// Blocks marked skipped today: the first commands (they run this), two of workload identity
/// and one of Kubernetes (an issuer on another host, a cluster), PostgreSQL at db.internal,
/// Docker, systemd.
const SKIPPED_AT_MOST: usize = 7;

/// A fenced block of README.md: its language, the line of its first content line, its lines.
struct Block {
    lang: String,
    line: usize,
    lines: Vec<String>,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_owned(),
                    line: i + 2,
                    lines: Vec::new(),
                })
            }
            (Some(_), Some("")) => out.extend(open.take()),
            (Some(b), _) => b.lines.push(line.to_owned()),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md ends inside a ``` block");
    out
}

/// The output a block shows: each `# secretfs: ...` comment, joined with its `#   ...`
/// continuation lines.
fn shown_output(block: &Block) -> Vec<String> {
    let mut shown: Vec<String> = Vec::new();
    let mut in_output = false;
    for line in &block.lines {
        if let Some(text) = line.strip_prefix("# secretfs: ") {
            shown.push(format!("secretfs: {text}"));
            in_output = true;
        } else if let (true, Some(more)) = (in_output, line.strip_prefix("#   ")) {
            let last = shown.last_mut().expect("in_output follows a shown line");
            last.push(' ');
            last.push_str(more.trim());
        } else {
            in_output = false;
        }
    }
    shown
}

#[test]
fn every_command_block_of_the_readme_runs_in_order() {
    if !fuse_available("every_command_block_of_the_readme_runs_in_order") {
        return;
    }
    let Some(venv) = crate::lepton::venv("every_command_block_of_the_readme_runs_in_order") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let all = blocks(&readme);

    // The walk: every sh block not marked, each announced by its line.
    let mut walk = String::new();
    let (mut run, mut skipped, mut shown) = (0, Vec::new(), Vec::new());
    for b in all.iter().filter(|b| b.lang == "sh") {
        if let Some(why) = b.lines.first().and_then(|l| l.strip_prefix(SKIP)) {
            skipped.push(format!("line {}: {why}", b.line));
            continue;
        }
        run += 1;
        shown.extend(shown_output(b));
        walk.push_str(&format!("block {}\n", b.line));
        for line in &b.lines {
            walk.push_str(line);
            walk.push('\n');
        }
    }
    // The job spec the README shows is the job.toml its `run --spec job.toml` reads.
    let spec = all
        .iter()
        .find(|b| b.lang == "toml" && b.lines.iter().any(|l| l.starts_with("command = [")))
        .expect("README.md shows a job spec (a toml block with command = [...])");

    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    std::fs::write(dir.join("walk.sh"), &walk).unwrap();
    std::fs::write(dir.join("job.toml"), spec.lines.join("\n") + "\n").unwrap();
    private_ca(dir, "DNS:secrets.example.com");
    let values = [
        ("README_HF_TOKEN", format!("hf_{}", unique_canary("readme"))),
        ("README_PASSWORD", unique_canary("readme")),
        ("README_NEW_PASSWORD", unique_canary("readme")),
        ("README_OPENAI", format!("sk-{}", unique_canary("readme"))),
        ("README_TLS_KEY", unique_canary("readme")),
        ("README_WANDB", unique_canary("readme")),
        ("README_OLD", unique_canary("readme")),
    ];

    let out_path = dir.join("output");
    let output = std::fs::File::create(&out_path).unwrap();
    let bindir = Path::new(bin()).parent().unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "bash",
    ])
    .arg(root.join("tests/it/readme_machine.sh"))
    .arg(dir)
    .arg(bindir)
    .arg(&venv)
    .env_remove("SECRETFS_STORE")
    .env_remove("SECRETFS_URL")
    .env_remove("SECRETFS_TOKEN")
    .env_remove("SECRETFS_TOKEN_FILE")
    .env_remove("SECRETFS_WORKSPACE")
    .envs(values.iter().map(|(k, v)| (k, v)))
    .stdin(Stdio::null())
    .stdout(output.try_clone().unwrap())
    .stderr(output);
    let mut machine = Running::spawn("the README's scratch machine", &mut cmd);
    let status = machine.wait_within(Duration::from_secs(180));
    let printed = std::fs::read_to_string(&out_path).unwrap();
    let failures = std::fs::read_to_string(dir.join("failures")).unwrap_or_default();
    eprintln!("--- what the walk-through printed:\n{printed}");

    eprintln!(
        "README.md: {run} command blocks run, {} skipped:\n  {}",
        skipped.len(),
        skipped.join("\n  ")
    );
    assert!(
        status.success() && failures.is_empty() && printed.contains("readme-walk: done"),
        "the README's walk-through failed ({status}); {failures}\n--- what it printed:\n{printed}"
    );
    // A walk-through that earns a warning (a token file others may read, a value with a stray
    // newline) shows a newcomer a problem on the first try: it has drifted too.
    let warned: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains("warning:") || l.contains(" WARN "))
        .collect();
    assert!(
        warned.is_empty(),
        "the walk-through warned:\n{}",
        warned.join("\n")
    );
    for line in &shown {
        assert!(
            printed.contains(line.as_str()),
            "README.md shows {line:?}, which the commands did not print:\n{printed}"
        );
    }
    for (name, value) in &values {
        assert!(
            !printed.contains(value.as_str()),
            "the walk-through printed the value of {name}:\n{printed}"
        );
    }
    // A new marker is a decision, taken here: raise this only for a block that cannot run on a
    // test machine.
    assert!(
        skipped.len() <= SKIPPED_AT_MOST,
        "{} README blocks are marked skipped, more than {SKIPPED_AT_MOST}",
        skipped.len()
    );
    assert!(run > 0, "no README block ran");
}

#[test]
fn blocks_and_shown_output_are_read_as_written() {
    let readme = "intro\n```sh\n# skipped by tests/it/readme.rs: no\nx\n```\n\n```sh\na \\\n  b\n\
                  # secretfs: one two\n#   three\n# other\n```\n```toml\nk = 1\n```\n";
    let all = blocks(readme);
    assert_eq!(all.len(), 3);
    assert_eq!((all[1].lang.as_str(), all[1].line), ("sh", 8));
    assert_eq!(shown_output(&all[1]), ["secretfs: one two three"]);
    assert_eq!(all[2].lines, ["k = 1"]);
    assert!(all[0].lines[0].starts_with(SKIP));
}
