//! Entry points for fuzzing: each takes arbitrary bytes and drives one parser or decoder the
//! way untrusted input reaches it. The `fuzz/` crate runs them under libFuzzer; the test suite
//! replays the committed corpora through the same functions, so CI checks every input the
//! fuzzer ever kept without needing a fuzzer.
//!
//! A target passes when it returns: parse errors are expected, panics are bugs.

use crate::api::fuzz_bodies;
use crate::crypto::{Binding, MasterKey, Sealer};
use crate::secret::{SecretKind, SecretName, SecretValue, ValueLimit, validate_tags};

/// The TOML job spec parser and the planner behind it.
pub fn job_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = crate::launch::spec::parse(text) {
        let args = crate::launch::args::RunArgs {
            command: vec!["true".into()],
            ..Default::default()
        };
        let _ = crate::launch::plan::plan(crate::launch::plan::Inputs {
            files: &[],
            args: &args,
            spec: Some((&spec, std::path::Path::new("/jobs"))),
            lepton: None,
            base_env: &[],
            cwd: std::path::Path::new("/"),
        })
        .map(|p| p.render());
    }
}

/// The Lepton job JSON reader.
pub fn lepton_job(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::launch::spec::parse_lepton_job(text);
    }
}

/// Name, tag and environment variable validation, and the template checks.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(name) = SecretName::parse(&text) {
        // A valid name is a valid single path component.
        assert!(!name.as_str().contains('/') && name.as_str() != "." && name.as_str() != "..");
    }
    let _ = crate::launch::plan::valid_env_name(&text);
    let tags: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let _ = validate_tags(&tags);
    let _ = text.parse::<SecretKind>();
    if let Ok(value) = SecretValue::from_slice(data, ValueLimit::default()) {
        for kind in SecretKind::ALL {
            let _ = kind.check(&value);
        }
    }
}

/// API request bodies, native and Lepton, through the same parser and checks the server uses.
pub fn api_bodies(data: &[u8]) {
    fuzz_bodies(data);
}

/// The sealed-value decoder: arbitrary bytes must fail to open, never panic.
pub fn sealed_value(data: &[u8]) {
    let sealer = Sealer::new(&MasterKey::from_bytes([7; 32]));
    let binding = Binding {
        workspace: "default",
        name: "FUZZ",
        secret_id: "id",
        version: 1,
    };
    assert!(sealer.open(&binding, data).is_err(), "random bytes opened");
}

/// The bearer token parser.
pub fn token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(p) = crate::auth::Presented::parse(text)
    {
        assert_eq!(p.id.len(), 16);
        assert!(!p.matches(&[0; 32]));
    }
}

/// A fuzz target: any bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by name (the fuzz crate's binaries and the corpus replay use these names).
pub const TARGETS: &[(&str, Target)] = &[
    ("job_spec", job_spec),
    ("lepton_job", lepton_job),
    ("names", names),
    ("api_bodies", api_bodies),
    ("sealed_value", sealed_value),
    ("token", token),
];
