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
    // Templates are given inline: `template = "TEXT"` stands for a file holding TEXT.
    let files = crate::render::load(&spec.files, Path::new("/jobs"), |p| {
        Ok(p.strip_prefix("/jobs").unwrap().display().to_string())
    })
    .unwrap();
    let got = plan(Inputs {
        args: &args,
        spec: Some((&spec, Path::new("/jobs"))),
        lepton: None,
        base_env: &env,
        cwd: Path::new("/work"),
        files: &files,
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

/// The launcher chooses its source as every consumer does: flags, then the spec, then the
/// environment (`SECRETFS_URL`, `SECRETFS_STORE` too, not only `SECRETFS_DIR`), two at one
/// level refused; a credential from the first level that gives one.
#[test]
fn the_environment_names_a_source_after_flags_and_spec_and_two_are_refused() {
    check(
        "",
        &["true"],
        &[
            ("SECRETFS_URL", "https://s.example"),
            ("SECRETFS_TOKEN_FILE", "/t"),
        ],
        // (SECRETFS_URL is inherited; the token file, the launcher's credential, is not.)
        Ok("command: true\nsource: server https://s.example\ninherit: all (1 variables)\n"),
    );
    check(
        "",
        &["true"],
        &[("SECRETFS_STORE", "/s.db")],
        Ok("command: true\nsource: store /s.db\ninherit: all (1 variables)\n"),
    );
    check(
        "",
        &["true"],
        &[
            ("SECRETFS_STORE", "/s.db"),
            ("SECRETFS_URL", "https://s.example"),
        ],
        Err("SECRETFS_STORE and SECRETFS_URL each name a source"),
    );
    // A flag settles it.
    check(
        "",
        &["--store", "/mine.db", "true"],
        &[
            ("SECRETFS_STORE", "/s.db"),
            ("SECRETFS_URL", "https://s.example"),
        ],
        Ok("command: true\nsource: store /mine.db\ninherit: all (2 variables)\n"),
    );
    check(
        "",
        &["--url", "https://s.example", "true"],
        &[
            ("SECRETFS_TOKEN", "sfs_w_x_y"),
            ("SECRETFS_TOKEN_FILE", "/t"),
        ],
        Err("SECRETFS_TOKEN and SECRETFS_TOKEN_FILE are two credentials for the server"),
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
        Err("--dir and --store each name a source"),
    );
    check(
        "[source]\ndir = \"/d\"\nstore = \"s\"",
        &["t"],
        &[],
        Err("[source] dir and [source] store each name a source"),
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
        files: &[],
    })
    .unwrap();
    let names: Vec<String> = p.secret_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["S", "T"]);
}

#[test]
fn secrets_are_refused_in_variables_read_as_paths_or_code() {
    for var in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "GCONV_PATH",
        "BASH_ENV",
        "ENV",
        "BASH_FUNC_x",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "PATH",
    ] {
        check(
            "",
            &["-s", &format!("{var}=deploy-key"), "--dir", "/d", "t"],
            &[],
            Err(&format!(
                "refusing to put secret \"deploy-key\" in {var} (-s): "
            )),
        );
    }
    // A file's path is refused too: BASH_ENV would make bash run the secret as a script.
    check(
        "[secret_files]\nBASH_ENV = \"script\"",
        &["--dir", "/d", "t"],
        &[],
        Err(
            "refusing to put the file of secret \"script\" in BASH_ENV (spec [secret_files]): bash runs the file it names",
        ),
    );
    // The problem says how to override, and every refusal is listed at once.
    let spec = spec::parse("[secrets]\nLD_PRELOAD = \"a\"\nBASH_ENV = \"b\"").unwrap();
    let args = args::parse(&[OsString::from("t")]).unwrap();
    let problems = plan(Inputs {
        args: &args,
        spec: Some((&spec, Path::new("."))),
        lepton: None,
        base_env: &[],
        cwd: Path::new("/"),
        files: &[],
    })
    .unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[1].contains("--allow-unsafe-env LD_PRELOAD"),
        "{problems:?}"
    );
    // Plain values are the user's own business; a look-alike name is not a match.
    check(
        "[env]\nLD_PRELOAD = \"/usr/lib/libjemalloc.so\"\n[secrets]\nLDAP_PASSWORD = \"a\"\nMY_ENV = \"b\"",
        &["--dir", "/d", "t"],
        &[],
        Ok("command: t\n\
            source: dir /d\n\
            inherit: all (0 variables)\n\
            CREDENTIALS_DIRECTORY=/d  # launcher\n\
            LDAP_PASSWORD=<secret a>  # spec [secrets]\n\
            LD_PRELOAD=/usr/lib/libjemalloc.so  # spec [env]\n\
            MY_ENV=<secret b>  # spec [secrets]\n\
            SECRETFS_DIR=/d  # launcher\n"),
    );
    // Whoever really means it says so, by flag or in the spec.
    for (toml, flags) in [
        ("", &["--allow-unsafe-env", "LD_PRELOAD"][..]),
        ("allow_unsafe_env = [\"LD_PRELOAD\"]", &[][..]),
    ] {
        let mut all = vec!["-s", "LD_PRELOAD=lib", "--dir", "/d"];
        all.extend_from_slice(flags);
        all.push("t");
        check(
            toml,
            &all,
            &[],
            Ok("command: t\n\
                source: dir /d\n\
                inherit: all (0 variables)\n\
                CREDENTIALS_DIRECTORY=/d  # launcher\n\
                LD_PRELOAD=<secret lib>  # -s\n\
                SECRETFS_DIR=/d  # launcher\n"),
        );
    }
}

#[test]
fn the_launchers_own_credentials_are_not_inherited_unless_asked_for() {
    let env = [
        ("PATH", "/bin"),
        ("SECRETFS_TOKEN", "sfs_w_x"),
        ("SECRETFS_TOKEN_FILE", "/t"),
        ("SECRETFS_IDENTITY_TOKEN_FILE", "/i"),
    ];
    let inherited = |toml: &str, flags: &[&str]| -> Vec<String> {
        let spec = spec::parse(toml).unwrap();
        let mut all: Vec<OsString> = flags.iter().map(OsString::from).collect();
        all.extend(["--dir", "/d", "t"].map(OsString::from));
        let args = args::parse(&all).unwrap();
        let env: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let p = plan(Inputs {
            args: &args,
            spec: Some((&spec, Path::new("."))),
            lepton: None,
            base_env: &env,
            cwd: Path::new("/"),
            files: &[],
        })
        .unwrap();
        let mut names: Vec<String> = p
            .inherited
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .chain(p.vars.iter().map(|v| v.name.clone()))
            .filter(|n| n.starts_with("SECRETFS_T") || n.starts_with("SECRETFS_I") || n == "PATH")
            .collect();
        names.sort();
        names
    };
    assert_eq!(inherited("", &[]), ["PATH"]);
    assert_eq!(
        inherited("inherit_env = [\"PATH\", \"SECRETFS_TOKEN_FILE\"]", &[]),
        ["PATH", "SECRETFS_TOKEN_FILE"]
    );
    assert_eq!(
        inherited(
            "[env]\nSECRETFS_TOKEN_FILE = \"/other\"",
            &["-e", "SECRETFS_TOKEN=x"]
        ),
        ["PATH", "SECRETFS_TOKEN", "SECRETFS_TOKEN_FILE"]
    );
}

#[test]
fn rendered_files_are_variables_of_the_spec_and_their_secrets_are_used() {
    let toml = "command = [\"a\"]\n[source]\nstore = \"s.db\"\n\
                [files.\"c.json\"]\ntemplate = \"{{ secret \\\"PW\\\" | json }}\"\nenv = \"CONF\"\n\
                [files.keys]\nbuiltin = \"authorized_keys\"\nenv = \"KEYS\"\n";
    check(
        toml,
        &["-e", "KEYS=flag"],
        &[],
        Ok("command: a\n\
            source: store /jobs/s.db\n\
            inherit: all (0 variables)\n\
            CONF=<file c.json rendered from its template>  # spec [files]\n\
            KEYS=flag  # -e\n\
            note: KEYS is set by spec [files] and by -e; -e wins\n"),
    );
    let spec = spec::parse(toml).unwrap();
    let files = crate::render::load(&spec.files, Path::new("/jobs"), |p| {
        Ok(p.strip_prefix("/jobs").unwrap().display().to_string())
    })
    .unwrap();
    let args = args::parse(&[]).unwrap();
    let p = plan(Inputs {
        args: &args,
        spec: Some((&spec, Path::new("/jobs"))),
        lepton: None,
        base_env: &[],
        cwd: Path::new("/work"),
        files: &files,
    })
    .unwrap();
    assert_eq!(p.secret_names(), vec![SecretName::parse("PW").unwrap()]);
}

#[test]
fn rendered_files_refuse_what_cannot_work() {
    let file = "[files.keys]\nbuiltin = \"authorized_keys\"\n";
    check(
        &format!("command = [\"a\"]\n[source]\nstore = \"s.db\"\n{file}"),
        &[],
        &[],
        Err("set env = \"VAR\""),
    );
    let file = "[files.keys]\nbuiltin = \"authorized_keys\"\nenv = \"K\"\n";
    check(
        &format!("command = [\"a\"]\n{file}"),
        &[],
        &[],
        Err("only the store or a server knows"),
    );
    check(
        &format!("command = [\"a\"]\n[source]\nstore = \"s.db\"\n{file}"),
        &["--watch", "--on-change", "signal:HUP"],
        &[],
        Err("cannot update rendered files"),
    );
    let file = "[files.x]\ntemplate = \"t\"\nenv = \"LD_PRELOAD\"\n";
    check(
        &format!("command = [\"a\"]\n{file}"),
        &[],
        &[],
        Err("refusing to put the rendered file \"x\" in LD_PRELOAD"),
    );
}

/// Plans `toml` (relative to /jobs) and `flags` (to /work), with no environment or files.
fn plan_of(toml: &str, flags: &[&str]) -> Result<ExecPlan, Vec<String>> {
    let spec = spec::parse(toml).unwrap();
    let flags: Vec<OsString> = flags.iter().map(OsString::from).collect();
    let args = args::parse(&flags).unwrap();
    plan(Inputs {
        args: &args,
        spec: Some((&spec, Path::new("/jobs"))),
        lepton: None,
        base_env: &[],
        cwd: Path::new("/work"),
        files: &[],
    })
}

/// Plans and returns every problem (for the broker checks, which report several at once).
fn problems_of(toml: &str, flags: &[&str]) -> Vec<String> {
    plan_of(toml, flags).err().unwrap_or_default()
}

#[test]
fn brokers_from_the_spec_and_flags_are_checked_every_problem_at_once() {
    let p = plan_of(
        "command = [\"a\"]\n[broker.openai]\nsecret = \"OPENAI\"\nca_file = \"ca.pem\"\n\
         [broker.custom]\nsecret = \"K\"\nupstream = \"https://api.example.com\"\nurl_env = \"K_URL\"\n\
         header = \"x-api-key: {}\"",
        &["--broker", "HF", "--broker", "OPENAI", "--broker-ca-file", "c2.pem"],
    )
    .unwrap();
    let names: Vec<(&str, &str)> = p
        .brokers
        .iter()
        .map(|b| (b.name.as_str(), b.secret.as_str()))
        .collect();
    assert_eq!(names, [("custom", "K"), ("openai", "OPENAI"), ("HF", "HF")]);
    // The spec's CA file is relative to the spec, the flag's to the working directory.
    assert_eq!(
        p.brokers[1].ca_file.as_deref(),
        Some(Path::new("/jobs/ca.pem"))
    );
    assert_eq!(
        p.brokers[2].ca_file.as_deref(),
        Some(Path::new("/work/c2.pem"))
    );
    assert_eq!(p.brokers[0].header.as_ref().unwrap().name, "x-api-key");
    assert!(
        p.notes.iter().any(|n| n.contains("--broker OPENAI")),
        "{:?}",
        p.notes
    );
    // Nothing of a broker is a secret the workload receives.
    assert!(p.secret_names().is_empty());

    let problems = problems_of(
        "command = [\"a\"]\n[secrets]\nOPENAI_BASE_URL = \"X\"\n\
         [broker.a]\nsecret = \"bad name!\"\nupstream = \"http://api.example.com\"\n\
         header = \"x-key: nothing\"\nurl_env = \"1BAD\"\n\
         [broker.b]\nsecret = \"B\"\nurl_env = \"OPENAI_BASE_URL\"\n\
         [broker.c]\nsecret = \"C\"\nurl_env = \"OPENAI_BASE_URL\"",
        &[],
    );
    for needle in [
        "[broker.\"a\"]: secret:",
        "[broker.\"a\"]: upstream \"http://api.example.com\" is not https",
        "[broker.\"a\"]: header \"x-key\" has no {}",
        "[broker.\"a\"]: invalid environment variable name \"1BAD\"",
        "OPENAI_BASE_URL is set by broker \"b\" and by broker \"c\"",
        "OPENAI_BASE_URL is set by spec [secrets] and by broker \"b\"",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{problems:#?} lacks {needle:?}"
        );
    }
}
