//! What a process cost, read from Linux's /proc: CPU time (all threads, user +
//! system) and resident memory, now and at its peak.

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// CPU seconds a process has used so far (`utime + stime` of /proc/<pid>/stat).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// Resident memory of a process (/proc/<pid>/status).
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_memory(&status).with_context(|| format!("parsing {path}"))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_kib: u64,
}

impl Memory {
    /// Adds another process's memory (the two proxies of a pair).
    pub fn plus(self, other: Memory) -> Memory {
        Memory {
            rss_kib: self.rss_kib + other.rss_kib,
            peak_rss_kib: self.peak_rss_kib + other.peak_rss_kib,
        }
    }
}

/// `utime + stime` in clock ticks. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so fields are counted after
/// the last `)`: state is field 3, utime 14, stime 15.
fn cpu_ticks(stat: &str) -> Result<u64> {
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .context("no `)` closing the command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize, name: &str| -> Result<u64> {
        let raw = fields
            .get(number - 3)
            .with_context(|| format!("field {number} ({name}) missing"))?;
        raw.parse()
            .with_context(|| format!("field {number} ({name}) is {raw:?}, expected a number"))
    };
    Ok(field(14, "utime")? + field(15, "stime")?)
}

fn parse_memory(status: &str) -> Result<Memory> {
    let kib = |key: &str| -> Result<u64> {
        let Some(line) = status.lines().find_map(|line| line.strip_prefix(key)) else {
            bail!("no {key} line");
        };
        let value = line.trim().trim_end_matches("kB").trim();
        value
            .parse()
            .with_context(|| format!("{key} is {value:?}, expected a number of kB"))
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has used 100 on every architecture for decades; -1 would mean unsupported.
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line, with a command name that contains spaces and a parenthesis.
    const STAT: &str = "4242 (plexus (x) proxy) S 1 4242 4242 0 -1 4194560 1391 0 0 0 \
        1234 567 0 0 20 0 3 0 123456 12345678 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn cpu_ticks_are_user_plus_system() {
        assert_eq!(cpu_ticks(STAT).unwrap(), 1234 + 567);
    }

    #[test]
    fn truncated_stat_names_the_missing_field() {
        let error = cpu_ticks("1 (x) S 1 2 3").unwrap_err();
        assert!(format!("{error:#}").contains("utime"), "{error:#}");
    }

    #[test]
    fn memory_from_status() {
        let status = "Name:\tplexus-proxy\nVmPeak:\t  30000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t    8765 kB\nThreads:\t3\n";
        assert_eq!(
            parse_memory(status).unwrap(),
            Memory {
                rss_kib: 8765,
                peak_rss_kib: 9876
            }
        );
    }

    #[test]
    fn status_without_rss_is_an_error() {
        let error = parse_memory("Name:\tx\nVmHWM:\t1 kB\n").unwrap_err();
        assert!(format!("{error:#}").contains("VmRSS"), "{error:#}");
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        let memory = memory(pid).unwrap();
        assert!(
            memory.rss_kib > 0 && memory.peak_rss_kib >= memory.rss_kib,
            "{memory:?}"
        );
    }
}
