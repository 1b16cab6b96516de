//! The watch policy of `secretfs run --watch` (flags over the spec's `[watch]`): what a change
//! of a used secret does, how changes are debounced, and the restart budget. Pure: no IO.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

/// How often a source is looked at for changes unless `--poll` says: by `--watch`, and by a
/// run whose brokers follow their secrets.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);

/// `--watch` and the watch options as given: the same fields as the spec's `[watch]`, so flags
/// lie over the spec field by field (`plan` parses the values, every problem at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchArgs {
    pub enabled: bool,
    pub given: WatchSpec,
}

/// Parses a duration such as `10s`, `500ms` or `2m`.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{what} {s:?} is not a duration ({e}); use e.g. 10s, 500ms or 2m"))
}

/// `[watch]` in a job spec; the table's presence turns supervision on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSpec {
    pub on_change: Option<String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<String>,
    pub debounce: Option<String>,
    pub max_restarts: Option<String>,
    pub exit_code: Option<u8>,
    pub process_group: Option<bool>,
    /// How often a directory source's files are checked.
    pub poll: Option<String>,
}

impl WatchSpec {
    /// These options, each falling back to `base`'s (flags over the spec).
    pub fn over(&self, base: &WatchSpec) -> WatchSpec {
        let pick = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        WatchSpec {
            on_change: pick(&self.on_change, &base.on_change),
            stop_signal: pick(&self.stop_signal, &base.stop_signal),
            stop_timeout: pick(&self.stop_timeout, &base.stop_timeout),
            debounce: pick(&self.debounce, &base.debounce),
            max_restarts: pick(&self.max_restarts, &base.max_restarts),
            exit_code: self.exit_code.or(base.exit_code),
            process_group: self.process_group.or(base.process_group),
            poll: pick(&self.poll, &base.poll),
        }
    }

    /// The flag of the first option set, if any (given without `--watch`, that is an error).
    fn first_flag(&self) -> Option<&'static str> {
        [
            (self.on_change.is_some(), "--on-change"),
            (self.stop_signal.is_some(), "--stop-signal"),
            (self.stop_timeout.is_some(), "--stop-timeout"),
            (self.debounce.is_some(), "--debounce"),
            (self.max_restarts.is_some(), "--max-restarts"),
            (self.exit_code.is_some(), "--exit-code"),
            (self.process_group.is_some(), "--process-group"),
            (self.poll.is_some(), "--poll"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// What a change of a used secret does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Stop the workload, re-resolve, start it again.
    Restart,
    /// Re-resolve (so a failure is noticed) and send the workload this signal.
    Signal(Signal),
    /// Stop the workload and end with this code, for an orchestrator to restart.
    Exit(u8),
}

/// At most `count` restarts within any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub count: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchPlan {
    pub on_change: OnChange,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub debounce: Duration,
    pub budget: Budget,
    pub process_group: bool,
    pub poll: Duration,
}

impl WatchPlan {
    /// The policy of a run that is supervised only to mask its output: nothing is followed,
    /// signals go to the workload.
    pub fn unwatched() -> WatchPlan {
        // The defaults of `--watch` with no option given: one place says what they are.
        let on = WatchArgs {
            enabled: true,
            ..Default::default()
        };
        let defaults = plan(&on, None)
            .ok()
            .flatten()
            .expect("the defaults are a valid policy");
        // Nothing to check: wake for signals only.
        WatchPlan {
            poll: Duration::from_secs(3600),
            ..defaults
        }
    }

    /// For `--dry-run`; `follows` says how changes are seen (it depends on the source).
    pub fn render(&self, follows: &str) -> String {
        let on_change = match self.on_change {
            OnChange::Restart => "restart".to_owned(),
            OnChange::Signal(s) => format!("signal:{}", short(s)),
            OnChange::Exit(code) => format!("exit {code}"),
        };
        format!(
            "watch: on change {on_change}; stop with {} then SIGKILL after {}; debounce {}; at \
             most {} restarts per {}; {}; {follows}\n",
            short(self.stop_signal),
            humantime::format_duration(self.stop_timeout),
            humantime::format_duration(self.debounce),
            self.budget.count,
            humantime::format_duration(self.budget.window),
            if self.process_group {
                "signals to the workload's process group"
            } else {
                "signals to the workload"
            },
        )
    }
}

fn short(s: Signal) -> &'static str {
    s.as_str().trim_start_matches("SIG")
}

/// `HUP`, `SIGHUP` or a number.
pub fn parse_signal(what: &str, s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let named = if upper.starts_with("SIG") {
        upper.clone()
    } else {
        format!("SIG{upper}")
    };
    named
        .parse::<Signal>()
        .ok()
        .or_else(|| {
            upper
                .parse::<i32>()
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
        })
        .filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP))
        .ok_or_else(|| {
            format!(
                "{what} {s:?} is not a signal that can be sent and caught (e.g. TERM, HUP, USR1)"
            )
        })
}

/// `5/10m`: at most 5 restarts in any 10 minutes.
pub fn parse_budget(what: &str, s: &str) -> Result<Budget, String> {
    let bad = || format!("{what} {s:?}: expected COUNT/DURATION, e.g. 5/10m");
    let (count, window) = s.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let window = parse_duration(what, window)?;
    if count == 0 || window.is_zero() {
        return Err(format!(
            "{what} {s:?}: both the count and the window must be above zero"
        ));
    }
    Ok(Budget { count, window })
}

/// The policy from the flags over the spec; `None` when neither asks for `--watch`. Every
/// problem at once.
pub fn plan(args: &WatchArgs, spec: Option<&WatchSpec>) -> Result<Option<WatchPlan>, Vec<String>> {
    if !args.enabled && spec.is_none() {
        return match args.given.first_flag() {
            Some(flag) => Err(vec![format!(
                "{flag} applies only with --watch (or [watch] in the spec)"
            )]),
            None => Ok(None),
        };
    }
    let w = args.given.over(spec.unwrap_or(&WatchSpec::default()));
    let mut problems = Vec::new();
    let mut duration = |name: &str, given: &Option<String>, default: Duration| match given {
        None => default,
        Some(v) => parse_duration(name, v).unwrap_or_else(|e| {
            problems.push(e);
            default
        }),
    };
    let stop_timeout = duration("--stop-timeout", &w.stop_timeout, Duration::from_secs(10));
    let debounce = duration("--debounce", &w.debounce, Duration::from_secs(2));
    let poll = duration("--poll", &w.poll, DEFAULT_POLL);
    if poll.is_zero() {
        problems.push("--poll must be above zero".into());
    }
    let stop_signal = match &w.stop_signal {
        None => Signal::SIGTERM,
        Some(v) => parse_signal("--stop-signal", v).unwrap_or_else(|e| {
            problems.push(e);
            Signal::SIGTERM
        }),
    };
    let exit_code = w.exit_code.unwrap_or(75);
    let on_change = match w.on_change.as_deref() {
        None | Some("restart") => OnChange::Restart,
        Some("exit") => OnChange::Exit(exit_code),
        Some(other) => match other.strip_prefix("signal:") {
            Some(sig) => match parse_signal("--on-change signal:", sig) {
                Ok(s) => OnChange::Signal(s),
                Err(e) => {
                    problems.push(e);
                    OnChange::Restart
                }
            },
            None => {
                problems.push(format!(
                    "--on-change {other:?}: expected restart, signal:NAME (e.g. signal:HUP) or exit"
                ));
                OnChange::Restart
            }
        },
    };
    let budget = match &w.max_restarts {
        None => Budget {
            count: 5,
            window: Duration::from_secs(600),
        },
        Some(v) => parse_budget("--max-restarts", v).unwrap_or_else(|e| {
            problems.push(e);
            Budget {
                count: 5,
                window: Duration::from_secs(600),
            }
        }),
    };
    if problems.is_empty() {
        Ok(Some(WatchPlan {
            on_change,
            stop_signal,
            stop_timeout,
            debounce,
            budget,
            process_group: w.process_group.unwrap_or(false),
            poll,
        }))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(watch: WatchArgs) -> WatchArgs {
        watch
    }

    #[test]
    fn defaults_flags_over_the_spec_and_every_mistake_at_once() {
        let on = WatchArgs {
            enabled: true,
            ..Default::default()
        };
        let p = plan(&args(on.clone()), None).unwrap().unwrap();
        assert_eq!(p.on_change, OnChange::Restart);
        assert_eq!(p.stop_signal, Signal::SIGTERM);
        assert_eq!(
            (p.stop_timeout, p.debounce),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        assert_eq!(
            p.budget,
            Budget {
                count: 5,
                window: Duration::from_secs(600)
            }
        );

        let spec = WatchSpec {
            on_change: Some("signal:hup".into()),
            debounce: Some("1s".into()),
            exit_code: Some(3),
            ..Default::default()
        };
        let flags = WatchArgs {
            enabled: false,
            given: WatchSpec {
                debounce: Some("0s".into()),
                ..Default::default()
            },
        };
        let p = plan(&args(flags), Some(&spec)).unwrap().unwrap();
        assert_eq!(p.on_change, OnChange::Signal(Signal::SIGHUP));
        assert_eq!(p.debounce, Duration::ZERO);

        let bad = WatchArgs {
            enabled: true,
            given: WatchSpec {
                on_change: Some("reload".into()),
                stop_signal: Some("KILL".into()),
                max_restarts: Some("5".into()),
                stop_timeout: Some("soon".into()),
                ..Default::default()
            },
        };
        let problems = plan(&args(bad), None).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--on-change \"reload\""))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("--stop-signal \"KILL\""))
        );
    }

    #[test]
    fn a_watch_option_without_watch_is_an_error_and_exit_takes_its_code() {
        let stray = WatchArgs {
            enabled: false,
            given: WatchSpec {
                debounce: Some("1s".into()),
                ..Default::default()
            },
        };
        assert!(
            plan(&args(stray), None).unwrap_err()[0]
                .contains("--debounce applies only with --watch")
        );
        assert_eq!(plan(&WatchArgs::default(), None), Ok(None));
        let exit = WatchArgs {
            enabled: true,
            given: WatchSpec {
                on_change: Some("exit".into()),
                exit_code: Some(9),
                ..Default::default()
            },
        };
        assert_eq!(
            plan(&args(exit), None).unwrap().unwrap().on_change,
            OnChange::Exit(9)
        );
        assert_eq!(
            parse_budget("b", "3/1m"),
            Ok(Budget {
                count: 3,
                window: Duration::from_secs(60)
            })
        );
        assert!(parse_budget("b", "0/1m").is_err());
    }
}
