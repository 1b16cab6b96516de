use std::ffi::OsString;

use super::*;
use crate::launch::args;
use crate::launch::spec;

/// Plans `toml` + `flags` over `env` and compares the rendered plan (what --dry-run prints).
fn check(toml: &str, flags: &[&str], env: &[(&str, &str)], expected: Result<&str, &str>) {
    let spec = spec::parse(toml).unwrap();
    let flags: Vec<OsString> = flags.iter().map(OsString::from).collect();
    let args = args::parse(&flags).unwrap();
    let env: Vec<(OsString, OsString)> = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    let got = plan(Inputs {
        args: &args,
        spec: Some((&spec, Path::new("/jobs"))),
        lepton: None,
        base_env: &env,
        cwd: Path::new("/work"),
    });
    match (got, expected) {
        (Ok(p), Ok(want)) => assert_eq!(p.render(), want, "\n{}", p.render()),
        (Err(problems), Err(needle)) => {
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{problems:?} lacks {needle:?}"
            )
        }
        (got, want) => panic!("got {got:?}, want {want:?}"),
    }
}

#[test]
fn spec_only() {
    check(
        "command = [\"python3\", \"train.py\"]\n[env]\nWANDB_PROJECT = \"demo\"\n[secrets]\nHF_TOKEN = \"HF_TOKEN\"\nKEY = \"openai-prod\"\n[secret_files]\nDB_PASSWORD_FILE = \"db-password\"\n[source]\ndir = \"/run/secrets\"\nwait = \"10s\"",
        &[],
        &[("PATH", "/bin"), ("HOME", "/root")],
        Ok("command: python3 train.py\n\
            source: dir /run/secrets (wait 10s)\n\
            inherit: all (2 variables)\n\
            CREDENTIALS_DIRECTORY=/run/secrets  # launcher\n\
            DB_PASSWORD_FILE=<file of secret db-password>  # spec [secret_files]\n\
            HF_TOKEN=<secret HF_TOKEN>  # spec [secrets]\n\
            KEY=<secret openai-prod>  # spec [secrets]\n\
            SECRETFS_DIR=/run/secrets  # launcher\n\
            WANDB_PROJECT=demo  # spec [env]\n"),
    );
}

#[test]
fn flags_win_and_overrides_are_reported() {
    check(
        "command = [\"a\"]\n[env]\nX = \"spec\"\nY = \"plain\"\n[secrets]\nY = \"S\"\n[source]\nstore = \"dev.db\"",
        &["-e", "X=flag", "-s", "Z=other", "--", "b", "c"],
        &[("X", "inherited")],
        Ok("command: b c\n\
            source: store /jobs/dev.db\n\
            inherit: all (0 variables)\n\
            X=flag  # -e\n\
            Y=<secret S>  # spec [secrets]\n\
            Z=<secret other>  # -s\n\
            note: Y is set by spec [env] and by spec [secrets]; spec [secrets] wins\n\
            note: X is set by spec [env] and by -e; -e wins\n"),
    );
}

#[test]
fn a_plain_flag_beats_a_spec_secret_and_a_later_flag_beats_an_earlier_one() {
    check(
        "[secrets]\nA = \"S\"",
        &[
            "-e", "A=plain", "-s", "B=one", "-s", "B=two", "--dir", "/d", "true",
        ],
        &[],
        Ok("command: true\n\
            source: dir /d\n\
            inherit: all (0 variables)\n\
            A=plain  # -e\n\
            B=<secret two>  # -s\n\
            CREDENTIALS_DIRECTORY=/d  # launcher\n\
            SECRETFS_DIR=/d  # launcher\n\
            note: A is set by spec [secrets] and by -e; -e wins\n\
            note: B is set by -s and by -s; -s wins\n"),
    );
}

#[test]
fn inherit_modes() {
    let env = [("PATH", "/bin"), ("HOME", "/h"), ("SECRET_LEFTOVER", "x")];
    check(
        "inherit_env = \"none\"",
        &["--store", "s.db", "t"],
        &env,
        Ok("command: t\nsource: store /work/s.db\ninherit: none (0 variables)\n"),
    );
    check(
        "inherit_env = [\"PATH\"]",
        &["--store", "s.db", "t"],
        &env,
        Ok("command: t\nsource: store /work/s.db\ninherit: PATH (1 variables)\n"),
    );
    check(
        "inherit_env = \"none\"",
        &["--inherit-env", "all", "--store", "s.db", "t"],
        &env,
        Ok("command: t\nsource: store /work/s.db\ninherit: all (3 variables)\n"),
    );
}

#[test]
fn default_source_is_secretfs_dir_then_run_secrets() {
    check(
        "",
        &["true"],
        &[("SECRETFS_DIR", "/mnt/s")],
        Ok(
            "command: true\nsource: dir /mnt/s\ninherit: all (0 variables)\nCREDENTIALS_DIRECTORY=/mnt/s  # launcher\nSECRETFS_DIR=/mnt/s  # launcher\n",
        ),
    );
    check(
        "",
        &["true"],
        &[],
        Ok(
            "command: true\nsource: dir /run/secrets\ninherit: all (0 variables)\nCREDENTIALS_DIRECTORY=/run/secrets  # launcher\nSECRETFS_DIR=/run/secrets  # launcher\n",
        ),
    );
}

#[test]
fn problems() {
    check("", &[], &[], Err("no command to run"));
    check(
        "[secrets]\n1BAD = \"A\"",
        &["t"],
        &[],
        Err("invalid environment variable name \"1BAD\""),
    );
    check(
        "[secrets]\nA = \"no/slash\"",
        &["t"],
        &[],
        Err("spec [secrets]: invalid secret name \"no/slash\""),
    );
    check(
        "",
        &["-s", "A=b c", "t"],
        &[],
        Err("-s: invalid secret name"),
    );
    check(
        "",
        &["--dir", "/d", "--store", "s", "t"],
        &[],
        Err("only one of --dir, --store and --url"),
    );
    check(
        "[source]\ndir = \"/d\"\nstore = \"s\"",
        &["t"],
        &[],
        Err("more than one of dir, store and url"),
    );
    check(
        "[source]\nstore = \"s\"\nwait = \"1s\"",
        &["t"],
        &[],
        Err("wait applies only to a directory source"),
    );
    check(
        "[source]\nwait = \"later\"",
        &["t"],
        &[],
        Err("[source] wait \"later\" is not a duration"),
    );
}

#[test]
fn secret_names_are_deduplicated() {
    let spec = spec::parse("[secrets]\nA = \"S\"\nB = \"S\"\n[secret_files]\nC = \"T\"").unwrap();
    let args = args::parse(&[OsString::from("t")]).unwrap();
    let p = plan(Inputs {
        args: &args,
        spec: Some((&spec, Path::new("."))),
        lepton: None,
        base_env: &[],
        cwd: Path::new("/"),
    })
    .unwrap();
    let names: Vec<String> = p.secret_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["S", "T"]);
}
