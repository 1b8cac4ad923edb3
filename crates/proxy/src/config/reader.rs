//! Typed reads of variables that collect every bad value instead of stopping
//! at the first, so one start names everything to fix.

use std::str::FromStr;
use std::time::Duration;

use super::env::Env;
use super::{BadVariable, ConfigError, VARIABLES};

/// The longest duration a variable may set: a year.
const MAX_MILLIS: u64 = 365 * 24 * 3600 * 1000;

/// Reads variables from an [`Env`], keeping the bad ones for [`Reader::finish`].
pub(super) struct Reader<'a> {
    env: &'a dyn Env,
    bad: Vec<BadVariable>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            bad: Vec::new(),
        }
    }

    /// The value as set, untrimmed.
    pub(super) fn raw(&self, name: &'static str) -> Option<String> {
        // A name missing from the list would be reported as unknown while read.
        debug_assert!(VARIABLES.contains(&name), "{name} is not in VARIABLES");
        self.env.get(name)
    }

    /// The trimmed value, `None` when unset or blank.
    pub(super) fn present(&self, name: &'static str) -> Option<String> {
        self.raw(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Records `name=value` as bad: `expected` says what would have been good.
    pub(super) fn bad(&mut self, name: &'static str, value: String, expected: &'static str) {
        self.bad.push(BadVariable {
            name,
            value,
            expected,
        });
    }

    /// `value` (of `name`) parsed, or `None` with the error recorded.
    pub(super) fn parse_value<T: FromStr>(
        &mut self,
        name: &'static str,
        value: String,
        expected: &'static str,
    ) -> Option<T> {
        match value.trim().parse() {
            Ok(parsed) => Some(parsed),
            Err(_) => {
                self.bad(name, value, expected);
                None
            }
        }
    }

    /// The variable parsed, `default` when unset (or bad: then recorded).
    pub(super) fn parse_or<T: FromStr>(
        &mut self,
        name: &'static str,
        default: T,
        expected: &'static str,
    ) -> T {
        match self.raw(name) {
            None => default,
            Some(value) => self.parse_value(name, value, expected).unwrap_or(default),
        }
    }

    /// The variable parsed; `None` when unset, blank or bad (then recorded).
    pub(super) fn optional<T: FromStr>(
        &mut self,
        name: &'static str,
        expected: &'static str,
    ) -> Option<T> {
        let value = self.raw(name).filter(|v| !v.trim().is_empty())?;
        self.parse_value(name, value, expected)
    }

    /// A duration in whole milliseconds, `default_ms` when unset. At most
    /// [`MAX_MILLIS`]: deadlines computed from it cannot overflow.
    pub(super) fn millis_or(&mut self, name: &'static str, default_ms: u64) -> Duration {
        const EXPECTED: &str = "milliseconds (an integer, at most 31536000000: a year)";
        let ms = self.parse_or(name, default_ms, EXPECTED);
        if ms > MAX_MILLIS {
            self.bad(name, ms.to_string(), EXPECTED);
            return Duration::from_millis(default_ms);
        }
        Duration::from_millis(ms)
    }

    /// A count of at least 1, `default` when unset.
    pub(super) fn count_or(&mut self, name: &'static str, default: usize) -> usize {
        const EXPECTED: &str = "a count of at least 1";
        match self.parse_or(name, default, EXPECTED) {
            0 => {
                self.bad(name, "0".into(), EXPECTED);
                default
            }
            count => count,
        }
    }

    /// The trimmed value of a variable that must be set (and not blank).
    pub(super) fn required(
        &mut self,
        name: &'static str,
        expected: &'static str,
    ) -> Option<String> {
        let value = self.present(name);
        if value.is_none() {
            self.bad(name, String::new(), expected);
        }
        value
    }

    /// Every bad variable at once, or `Ok` if there were none.
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        if self.bad.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { bad: self.bad })
        }
    }
}
