//! `plexusctl traces`: run a `plexus-traces` receiver and print each finished trace.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use plexus_traces::{AssemblyConfig, Receiver, Trace, render_waterfall};

/// Receive OTLP traces (gRPC and HTTP/protobuf) and print each finished trace
/// as a waterfall, or as JSON.
#[derive(Debug, Clone, clap::Args)]
pub struct TracesCommand {
    /// Address of the OTLP/gRPC listener (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub grpc_addr: SocketAddr,
    /// Address of the OTLP/HTTP listener (`POST /v1/traces`, protobuf).
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub http_addr: SocketAddr,
    /// Print one JSON document per finished trace (one per line) instead of a waterfall.
    #[arg(long)]
    pub json: bool,
    /// A trace is finished when no span of it arrived for this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub quiet_period: Duration,
    /// A trace whose root arrived and that misses no parent is finished after this quiet time.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    pub root_settle: Duration,
    /// Exit after printing this many traces.
    #[arg(long)]
    pub max_traces: Option<usize>,
    /// Exit after this long, first printing the traces still pending (e.g. `30s`).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Unfinished traces kept in memory at most (the oldest are dropped and counted).
    #[arg(long, default_value_t = AssemblyConfig::default().max_pending_traces)]
    pub max_pending_traces: usize,
    /// Spans of unfinished traces kept in memory at most.
    #[arg(long, default_value_t = AssemblyConfig::default().max_pending_spans)]
    pub max_pending_spans: usize,
    /// Width of the waterfall's timeline column.
    #[arg(long, default_value_t = 40)]
    pub bar_width: usize,
}

impl TracesCommand {
    /// Runs until `--max-traces`, `--timeout` or Ctrl-C. Addresses and
    /// summaries go to stderr so that stdout holds only traces.
    pub async fn run(self) -> anyhow::Result<()> {
        let config = AssemblyConfig {
            quiet_period: self.quiet_period,
            root_settle: self.root_settle,
            max_pending_traces: self.max_pending_traces,
            max_pending_spans: self.max_pending_spans,
        };
        let mut receiver = Receiver::bind_with(self.grpc_addr, self.http_addr, config)
            .await
            .context("starting the OTLP receiver")?;
        eprintln!(
            "OTLP/gRPC listening on {} (exporter endpoint {})",
            receiver.grpc_addr(),
            receiver.grpc_endpoint()
        );
        eprintln!(
            "OTLP/HTTP listening on {} (POST {})",
            receiver.http_addr(),
            receiver.http_traces_url()
        );

        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut out = io::stdout().lock();
        let mut printed = 0usize;
        let done = |printed: usize| self.max_traces.is_some_and(|max| printed >= max);
        while !done(printed) {
            let trace = tokio::select! {
                trace = receiver.next_trace() => trace,
                () = sleep_until(deadline) => break,
                _ = tokio::signal::ctrl_c() => break,
            };
            let Some(trace) = trace else { break };
            if !self.print(&trace, &mut out)? {
                return Ok(());
            }
            printed += 1;
        }
        for trace in receiver.take_pending() {
            if done(printed) || !self.print(&trace, &mut out)? {
                break;
            }
            printed += 1;
        }
        let stats = receiver.stats();
        eprintln!(
            "{printed} trace(s) printed; {} span(s) received, {} rejected as malformed, {} trace(s) ({} span(s)) dropped over the memory caps",
            stats.spans_received, stats.spans_rejected, stats.evicted.traces, stats.evicted.spans
        );
        Ok(())
    }

    /// Prints one trace; `false` when stdout was closed (e.g. piped into `head`).
    fn print(&self, trace: &Trace, out: &mut impl Write) -> anyhow::Result<bool> {
        let text = if self.json {
            let mut line = serde_json::to_string(trace).context("encoding a trace as JSON")?;
            line.push('\n');
            line
        } else {
            format!("{}\n", render_waterfall(trace, self.bar_width))
        };
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing to stdout"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// `250ms`, `2s`, `1m`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 2s or 1m, got {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "unknown duration unit {unit:?} in {s:?} (use ms, s or m)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
