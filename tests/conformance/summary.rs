//! The suite's summary: what each case checked, per fixture, printed once the last
//! case of the run has finished.
//!
//! Every test records its result here (passed, not applicable with its reason, or
//! failed). The run's size is known from the test names the `conformance!` macro
//! generates and the filters libtest was given, so the test that finishes last prints
//! the summary, straight to the process's stderr (libtest captures only what tests
//! print with `print!`/`eprint!`), before libtest's closing `test result:` line.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Mutex, PoisonError};

use crate::fixture::Outcome;

/// One finished test.
struct Finished {
    case: String,
    result: Result<Outcome, ()>,
}

struct Run {
    expected: Option<usize>,
    finished: BTreeMap<&'static str, Vec<Finished>>,
    printed: bool,
}

static RUN: Mutex<Run> = Mutex::new(Run {
    expected: None,
    finished: BTreeMap::new(),
    printed: false,
});

/// A test in progress: [`Record::finish`] records its outcome; dropped without it (the
/// case panicked), it records a failure.
pub struct Record {
    fixture: &'static str,
    case: String,
    outcome: Option<Outcome>,
}

impl Record {
    /// Starts recording test `<module>::<case>` of `fixture`.
    pub fn start(fixture: &'static str, case: &str) -> Record {
        Record {
            fixture,
            case: case.to_owned(),
            outcome: None,
        }
    }

    /// The case returned `outcome`.
    pub fn finish(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let result = self.outcome.take().ok_or(());
        let mut run = RUN.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = *run
            .expected
            .get_or_insert_with(|| selected(&crate::test_names(), std::env::args().skip(1)));
        run.finished
            .entry(self.fixture)
            .or_default()
            .push(Finished {
                case: std::mem::take(&mut self.case),
                result,
            });
        let done: usize = run.finished.values().map(Vec::len).sum();
        if done >= expected && !run.printed {
            run.printed = true;
            let text = render(&run.finished);
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(text.as_bytes());
            let _ = stderr.flush();
        }
    }
}

/// The summary: per fixture, how many passed (and which parts were not checked, why),
/// which cases were not applicable and why, which failed.
fn render(finished: &BTreeMap<&'static str, Vec<Finished>>) -> String {
    let mut out = String::from("\nconformance summary\n");
    let (mut passed, mut not_applicable, mut failed) = (0, 0, 0);
    for (fixture, tests) in finished {
        let mut tests: Vec<&Finished> = tests.iter().collect();
        tests.sort_by(|a, b| a.case.cmp(&b.case));
        let count = |f: fn(&Finished) -> bool| tests.iter().filter(|t| f(t)).count();
        let p = count(|t| matches!(t.result, Ok(Outcome::Passed { .. })));
        let n = count(|t| matches!(t.result, Ok(Outcome::NotApplicable { .. })));
        let f = count(|t| t.result.is_err());
        passed += p;
        not_applicable += n;
        failed += f;
        out.push_str(&format!(
            "{fixture}: {p} passed, {n} not applicable, {f} failed\n"
        ));
        for test in &tests {
            let case = &test.case;
            match &test.result {
                Ok(Outcome::Passed { unchecked }) => {
                    for (part, reason) in unchecked {
                        out.push_str(&format!("  {case}: passed without {part}: {reason}\n"));
                    }
                }
                Ok(Outcome::NotApplicable { reason, instead }) => {
                    out.push_str(&format!("  {case}: not applicable: {reason}"));
                    if let Some(instead) = instead {
                        out.push_str(&format!(" (checked instead: {instead})"));
                    }
                    out.push('\n');
                }
                Err(()) => out.push_str(&format!("  {case}: FAILED\n")),
            }
        }
    }
    out.push_str(&format!(
        "conformance: {passed} passed, {not_applicable} not applicable, {failed} failed\n\n"
    ));
    out
}

/// How many of `names` this run executes, by libtest's filters: positional filters
/// (substrings, or whole names with `--exact`; any one must match) and `--skip`.
/// With `--ignored` nothing of the suite runs (no case is ignored).
fn selected(names: &[String], args: impl IntoIterator<Item = String>) -> usize {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut exact = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            "--ignored" => return 0,
            "--skip" => skips.extend(args.next()),
            _ if arg.starts_with("--skip=") => skips.push(arg["--skip=".len()..].to_owned()),
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" | "--shuffle-seed" => {
                args.next();
            }
            _ if arg.starts_with('-') => {}
            _ => filters.push(arg),
        }
    }
    let matches = |name: &str, pattern: &str| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    };
    names
        .iter()
        .filter(|name| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|name| !skips.iter().any(|s| matches(name, s)))
        .count()
}

#[cfg(test)]
mod tests {
    use super::selected;

    fn count(args: &[&str]) -> usize {
        let names: Vec<String> = [
            "redis::ttl_expiry",
            "redis::request_reply",
            "redis_pubsub::ttl_expiry",
            "nats::jetstream::ttl_expiry",
        ]
        .map(String::from)
        .into();
        selected(&names, args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn the_summary_counts_the_tests_libtest_selects() {
        assert_eq!(count(&[]), 4);
        assert_eq!(count(&["redis::"]), 2);
        assert_eq!(count(&["redis"]), 3);
        assert_eq!(count(&["::ttl_expiry", "--test-threads", "2"]), 3);
        assert_eq!(count(&["--test-threads=1", "redis", "nats"]), 4);
        assert_eq!(count(&["--exact", "redis::ttl_expiry"]), 1);
        assert_eq!(count(&["ttl", "--skip", "pubsub"]), 2);
        assert_eq!(count(&["--skip=jetstream", "--nocapture"]), 3);
        assert_eq!(count(&["--ignored"]), 0);
    }
}
