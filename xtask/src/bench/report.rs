//! What a bench run found, as tables for people or JSON for machines.

use std::fmt::Write;

use serde::Serialize;

use super::collector::OtlpSetting;
use super::compare::{AddedLatency, VersusDirect, cpu_ms_per_1k_requests};
use super::handshake::HandshakeTimes;
use super::latency::{LatencyHistogram, LatencySummary};
use super::procfs::Memory;
use super::scenario::{Pacing, Scenario};
use super::targets::{self, TargetCheck};

/// The run's settings, as resolved from the flags.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Each group's scenarios run this many times, interleaved, and are merged.
    pub rounds: usize,
    pub rate: Option<f64>,
    pub rate_connections: usize,
    pub rss_requests: u64,
    pub max_requests: u64,
    pub loadgen_threads: usize,
    pub upstream_threads: usize,
    /// `PLEXUS_WORKER_THREADS` given to the proxies; none: their default.
    pub proxy_threads: Option<usize>,
    pub cpus: usize,
    /// Whether the proxies traced, and to what collector.
    pub otlp: OtlpSetting,
}

/// What one scenario measured inside its window.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub seconds: f64,
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: LatencySummary,
    /// What `latency` is read from, kept so rounds can be merged.
    #[serde(skip)]
    pub histogram: LatencyHistogram,
    /// CPU of this process: the load generator (and the idle orchestration).
    pub loadgen_cpu_s: f64,
    pub upstream_cpu_s: f64,
    pub proxies: Vec<ProcessCost>,
}

impl Measurement {
    pub fn new(
        seconds: f64,
        histogram: LatencyHistogram,
        errors: u64,
        first_error: Option<String>,
        loadgen_cpu_s: f64,
        upstream_cpu_s: f64,
        proxies: Vec<ProcessCost>,
    ) -> Self {
        Self {
            seconds,
            completed: histogram.count(),
            errors,
            first_error,
            latency: histogram.summary(),
            histogram,
            loadgen_cpu_s,
            upstream_cpu_s,
            proxies,
        }
    }

    /// Adds another round of the same scenario: times, requests and CPU add
    /// up, latencies are merged, memory is the larger of the two.
    pub fn merge(&mut self, round: Measurement) -> anyhow::Result<()> {
        self.histogram.merge(&round.histogram)?;
        self.latency = self.histogram.summary();
        self.completed = self.histogram.count();
        self.seconds += round.seconds;
        self.errors += round.errors;
        if self.first_error.is_none() {
            self.first_error = round.first_error;
        }
        self.loadgen_cpu_s += round.loadgen_cpu_s;
        self.upstream_cpu_s += round.upstream_cpu_s;
        for (mine, theirs) in self.proxies.iter_mut().zip(round.proxies) {
            mine.cpu_s += theirs.cpu_s;
            mine.memory = Memory {
                rss_kib: mine.memory.rss_kib.max(theirs.memory.rss_kib),
                peak_rss_kib: mine.memory.peak_rss_kib.max(theirs.memory.peak_rss_kib),
            };
        }
        Ok(())
    }

    pub fn requests_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.completed as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// CPU seconds of all proxies together; none in a direct scenario.
    pub fn proxy_cpu_s(&self) -> Option<f64> {
        (!self.proxies.is_empty()).then(|| self.proxies.iter().map(|proxy| proxy.cpu_s).sum())
    }

    /// Memory of all proxies together; none in a direct scenario.
    pub fn proxy_memory(&self) -> Option<Memory> {
        (!self.proxies.is_empty()).then(|| {
            self.proxies
                .iter()
                .fold(Memory::default(), |sum, proxy| sum.plus(proxy.memory))
        })
    }
}

/// One proxy process's cost in a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessCost {
    /// "proxy", or "client" / "server" in a pair.
    pub role: &'static str,
    pub cpu_s: f64,
    pub memory: Memory,
}

#[derive(Clone, Debug, Serialize)]
pub struct RssAfterRequests {
    pub requests: u64,
    pub errors: u64,
    pub connections: usize,
    pub memory: Memory,
}

#[derive(Serialize)]
pub struct Report {
    pub settings: Settings,
    pub scenarios: Vec<ScenarioReport>,
    /// A fresh proxy's memory after `settings.rss_requests` requests.
    pub rss_after_requests: Option<Outcome<RssAfterRequests>>,
    /// What a new connection costs: to the server proxy (mTLS) and to nginx.
    pub handshakes: Option<Outcome<HandshakeCosts>>,
    /// The project's targets this run has figures for.
    pub targets: Vec<TargetCheck>,
}

/// New connections, one after the other: full TLS 1.3 handshakes with client
/// certificates, to the server proxy and to nginx.
#[derive(Serialize)]
pub struct HandshakeCosts {
    pub proxy: HandshakeTimes,
    pub nginx: Outcome<HandshakeTimes>,
    /// Mean time of a new connection to the proxy over one to nginx.
    pub mean_ratio: Option<f64>,
}

impl HandshakeCosts {
    pub fn new(proxy: HandshakeTimes, nginx: Result<HandshakeTimes, String>) -> Self {
        let mean_ratio = nginx
            .as_ref()
            .ok()
            .filter(|nginx| nginx.mean_us > 0.0)
            .map(|nginx| proxy.mean_us / nginx.mean_us);
        Self {
            proxy,
            nginx: match nginx {
                Ok(times) => Outcome::Measured(times),
                Err(error) => Outcome::Failed(error),
            },
            mean_ratio,
        }
    }
}

#[derive(Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub scenario: Scenario,
    #[serde(flatten)]
    pub outcome: Outcome<Measured>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    Measured(T),
    Failed(String),
}

/// A measurement with the figures derived from it.
#[derive(Serialize)]
pub struct Measured {
    pub requests_per_sec: f64,
    /// The proxies' figures (summed over a pair); absent for direct scenarios.
    pub proxy_cpu_s: Option<f64>,
    /// Proxy CPU ms per 1,000 requests (= ms of CPU per second at 1,000 req/s).
    pub proxy_cpu_ms_per_1k_requests: Option<f64>,
    pub proxy_memory: Option<Memory>,
    /// Absent for direct scenarios and when direct was not measured.
    pub versus_direct: Option<VersusDirect>,
    pub measurement: Measurement,
}

impl Report {
    pub fn new(
        settings: Settings,
        measurements: Vec<(Scenario, anyhow::Result<Measurement>)>,
        rss_after_requests: Option<Result<RssAfterRequests, String>>,
    ) -> Self {
        let direct_of = |scenario: &Scenario| {
            measurements
                .iter()
                .find_map(|(candidate, result)| match result {
                    Ok(measurement) if *candidate == scenario.direct() => Some(measurement),
                    _ => None,
                })
        };
        let scenarios = measurements
            .iter()
            .map(|(scenario, result)| {
                let outcome = match result {
                    Err(error) => Outcome::Failed(format!("{error:#}")),
                    Ok(measurement) => {
                        let versus_direct = (scenario.topology.proxies() > 0)
                            .then(|| direct_of(scenario))
                            .flatten()
                            .map(|direct| {
                                VersusDirect::of(
                                    measurement.requests_per_sec(),
                                    &measurement.latency,
                                    direct.requests_per_sec(),
                                    &direct.latency,
                                )
                            });
                        Outcome::Measured(Measured {
                            requests_per_sec: measurement.requests_per_sec(),
                            proxy_cpu_s: measurement.proxy_cpu_s(),
                            proxy_cpu_ms_per_1k_requests: measurement.proxy_cpu_s().and_then(
                                |cpu_s| cpu_ms_per_1k_requests(cpu_s, measurement.completed),
                            ),
                            proxy_memory: measurement.proxy_memory(),
                            versus_direct,
                            measurement: measurement.clone(),
                        })
                    }
                };
                ScenarioReport {
                    name: scenario.name(),
                    scenario: *scenario,
                    outcome,
                }
            })
            .collect();
        let mut report = Self {
            settings,
            scenarios,
            rss_after_requests: rss_after_requests.map(|result| match result {
                Ok(rss) => Outcome::Measured(rss),
                Err(error) => Outcome::Failed(error),
            }),
            handshakes: None,
            targets: Vec::new(),
        };
        report.targets = targets::check(&report);
        report
    }

    /// Adds the new-connection costs (and the target they are judged by).
    pub fn set_handshakes(&mut self, handshakes: Option<Result<HandshakeCosts, String>>) {
        self.handshakes = handshakes.map(|result| match result {
            Ok(costs) => Outcome::Measured(costs),
            Err(error) => Outcome::Failed(error),
        });
        self.targets = targets::check(self);
    }

    /// Every scenario measured, without a failed request.
    pub fn all_measured(&self) -> bool {
        let scenarios_ok = self.scenarios.iter().all(|scenario| {
            matches!(&scenario.outcome, Outcome::Measured(measured) if measured.measurement.errors == 0)
        });
        scenarios_ok
            && !matches!(self.rss_after_requests, Some(Outcome::Failed(_)))
            && !matches!(self.handshakes, Some(Outcome::Failed(_)))
    }

    pub fn render_text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plexus bench: {} CPUs shared by everything; {} round(s) of {} s per scenario after {} s warm-up; \
             load generator {} thread(s), upstream {} thread(s), proxy {} thread(s)",
            s.cpus,
            s.rounds,
            s.duration_s,
            s.warmup_s,
            s.loadgen_threads,
            s.upstream_threads,
            s.proxy_threads.map_or("default".into(), |n| n.to_string())
        );
        let _ = writeln!(out, "proxy tracing: {}", s.otlp);
        let _ = writeln!(
            out,
            "latency in µs; \"+a r×\" = µs added to direct and ratio to direct; CPU and memory are the \
             proxies' (both, for a pair); load/up CPU = CPU seconds of the load generator and the upstream"
        );
        let closed: Vec<_> = self
            .scenarios
            .iter()
            .filter(|r| r.scenario.pacing == Pacing::ClosedLoop)
            .collect();
        let fixed: Vec<_> = self
            .scenarios
            .iter()
            .filter(|r| r.scenario.pacing != Pacing::ClosedLoop)
            .collect();
        if !closed.is_empty() {
            let _ = writeln!(
                out,
                "\nclosed loop (each connection sends its next request when the answer arrives)"
            );
            render_table(&mut out, &closed, "CPU ms/1k req");
        }
        if !fixed.is_empty() {
            let _ = writeln!(
                out,
                "\nfixed rate, open loop (latency from each request's intended send time; CPU per 1,000 req/s in ms/s, 10 = 1 % of a core)"
            );
            render_table(&mut out, &fixed, "CPU per 1k/s");
        }
        match &self.rss_after_requests {
            Some(Outcome::Measured(rss)) => {
                let _ = writeln!(
                    out,
                    "\nproxy memory after {} requests (HTTP/1.1, {} connections, {} errors): RSS {:.1} MiB, peak {:.1} MiB",
                    rss.requests,
                    rss.connections,
                    rss.errors,
                    mib(rss.memory.rss_kib),
                    mib(rss.memory.peak_rss_kib)
                );
            }
            Some(Outcome::Failed(error)) => {
                let _ = writeln!(
                    out,
                    "\nproxy memory after {} requests: FAILED: {error}",
                    s.rss_requests
                );
            }
            None => {}
        }
        render_handshakes(&mut out, self.handshakes.as_ref());
        if !self.targets.is_empty() {
            let _ = writeln!(
                out,
                "\ntargets (one run on a shared machine: a single miss may be noise):"
            );
            for check in &self.targets {
                let verdict = if check.met { "met" } else { "MISSED" };
                let _ = writeln!(
                    out,
                    "  {verdict:<6} {:>8.2}  {}",
                    check.measured, check.target
                );
            }
        }
        let problems: Vec<_> = self
            .scenarios
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed(error) => Some(format!("{}: FAILED: {error}", r.name)),
                Outcome::Measured(m) if m.measurement.errors > 0 => Some(format!(
                    "{}: {} failed requests, first: {}",
                    r.name,
                    m.measurement.errors,
                    m.measurement.first_error.as_deref().unwrap_or("?")
                )),
                Outcome::Measured(_) => None,
            })
            .collect();
        if !problems.is_empty() {
            let _ = writeln!(out, "\nproblems:");
            for problem in problems {
                let _ = writeln!(out, "  {problem}");
            }
        }
        out
    }
}

fn render_handshakes(out: &mut String, handshakes: Option<&Outcome<HandshakeCosts>>) {
    let times = |t: &HandshakeTimes| {
        format!(
            "mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
            t.mean_us, t.p50_us, t.p99_us
        )
    };
    match handshakes {
        Some(Outcome::Measured(costs)) => {
            let _ = writeln!(
                out,
                "\nnew connections, one after the other (TCP + full TLS 1.3 handshake with client \
                 certificates + the server's first HTTP/2 bytes), {} each:",
                costs.proxy.count
            );
            let _ = writeln!(out, "  server proxy (mTLS): {}", times(&costs.proxy));
            match &costs.nginx {
                Outcome::Measured(nginx) => {
                    let _ = writeln!(out, "  nginx (TLS 1.3):     {}", times(nginx));
                }
                Outcome::Failed(error) => {
                    let _ = writeln!(out, "  nginx: not measured: {error}");
                }
            }
            if let Some(ratio) = costs.mean_ratio {
                let _ = writeln!(out, "  proxy / nginx (mean): {ratio:.2}×");
            }
        }
        Some(Outcome::Failed(error)) => {
            let _ = writeln!(out, "\nnew connections: FAILED: {error}");
        }
        None => {}
    }
}

fn render_table(out: &mut String, rows: &[&ScenarioReport], cpu_header: &str) {
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>7} {:>9} {:>14} {:>9} {:>14} {:>9} {:>14} {:>8} {:>13} {:>8} {:>8} {:>11} {:>6}",
        "scenario",
        "req/s",
        "×direct",
        "p50",
        "+µs ×",
        "p99",
        "+µs ×",
        "p99.9",
        "+µs ×",
        "CPU s",
        cpu_header,
        "RSS MiB",
        "peak MiB",
        "load/up CPU",
        "errors"
    );
    for row in rows {
        let measured = match &row.outcome {
            Outcome::Measured(measured) => measured,
            Outcome::Failed(_) => {
                let _ = writeln!(out, "{:<22} FAILED (see below)", row.name);
                continue;
            }
        };
        let m = &measured.measurement;
        let versus = measured.versus_direct.as_ref();
        let dash_or = |figure: Option<f64>, decimals: usize| {
            figure.map_or("-".into(), |f| format!("{f:.decimals$}"))
        };
        let memory = measured.proxy_memory;
        let _ = writeln!(
            out,
            "{:<22} {:>9.0} {:>7} {:>9.1} {:>14} {:>9.1} {:>14} {:>9.1} {:>14} {:>8} {:>13} {:>8} {:>8} {:>11} {:>6}",
            row.name,
            measured.requests_per_sec,
            dash_or(versus.and_then(|v| v.throughput_ratio), 2),
            m.latency.p50_us,
            added(versus.map(|v| v.p50)),
            m.latency.p99_us,
            added(versus.map(|v| v.p99)),
            m.latency.p999_us,
            added(versus.map(|v| v.p999)),
            dash_or(measured.proxy_cpu_s, 2),
            dash_or(measured.proxy_cpu_ms_per_1k_requests, 1),
            dash_or(memory.map(|m| mib(m.rss_kib)), 1),
            dash_or(memory.map(|m| mib(m.peak_rss_kib)), 1),
            format!("{:.2}/{:.2}", m.loadgen_cpu_s, m.upstream_cpu_s),
            m.errors
        );
    }
}

fn added(latency: Option<AddedLatency>) -> String {
    match latency {
        None => "-".into(),
        Some(AddedLatency { added_us, ratio }) => match ratio {
            Some(ratio) => format!("{added_us:+.1} {ratio:.2}×"),
            None => format!("{added_us:+.1}"),
        },
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scenario::{Protocol, Topology};

    fn settings() -> Settings {
        Settings {
            duration_s: 5.0,
            warmup_s: 1.0,
            rounds: 1,
            rate: None,
            rate_connections: 4,
            rss_requests: 100_000,
            max_requests: 1_000_000,
            loadgen_threads: 1,
            upstream_threads: 1,
            proxy_threads: None,
            cpus: 2,
            otlp: OtlpSetting::Off,
        }
    }

    fn scenario(topology: Topology) -> Scenario {
        Scenario {
            topology,
            protocol: Protocol::H1,
            connections: 16,
            pacing: Pacing::ClosedLoop,
        }
    }

    fn measurement(completed: u64, p50_us: f64, proxies: usize) -> Measurement {
        Measurement {
            seconds: 5.0,
            completed,
            errors: 0,
            first_error: None,
            latency: LatencySummary {
                p50_us,
                p99_us: p50_us * 2.0,
                p999_us: p50_us * 3.0,
                max_us: p50_us * 4.0,
                mean_us: p50_us,
            },
            histogram: LatencyHistogram::new(),
            loadgen_cpu_s: 4.0,
            upstream_cpu_s: 3.0,
            proxies: (0..proxies)
                .map(|_| ProcessCost {
                    role: "proxy",
                    cpu_s: 2.5,
                    memory: Memory {
                        rss_kib: 8 * 1024,
                        peak_rss_kib: 9 * 1024,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn proxied_scenarios_are_compared_with_their_direct_run() {
        let report = Report::new(
            settings(),
            vec![
                (
                    scenario(Topology::Direct),
                    Ok(measurement(50_000, 100.0, 0)),
                ),
                (scenario(Topology::Proxy), Ok(measurement(30_000, 150.0, 1))),
                (
                    scenario(Topology::PairMtls),
                    Ok(measurement(20_000, 250.0, 2)),
                ),
            ],
            None,
        );
        let measured = |index: usize| match &report.scenarios[index].outcome {
            Outcome::Measured(measured) => measured,
            Outcome::Failed(error) => panic!("{error}"),
        };
        assert!(measured(0).versus_direct.is_none());
        let proxy = measured(1);
        assert_eq!(proxy.requests_per_sec, 6_000.0);
        let versus = proxy.versus_direct.unwrap();
        assert_eq!(versus.throughput_ratio, Some(0.6));
        assert_eq!(versus.p50.added_us, 50.0);
        // 2.5 CPU s over 30,000 requests.
        assert!((proxy.proxy_cpu_ms_per_1k_requests.unwrap() - 83.333).abs() < 0.01);
        let pair = measured(2);
        assert_eq!(pair.proxy_cpu_s, Some(5.0));
        assert_eq!(pair.proxy_memory.map(|m| m.rss_kib), Some(16 * 1024));
        assert_eq!(measured(0).proxy_cpu_s, None);
        assert!(report.all_measured());
        // Throughput 0.6 of direct; the mTLS pair's 0.4; no 1-connection run, no memory run.
        let targets: Vec<(f64, bool)> =
            report.targets.iter().map(|t| (t.measured, t.met)).collect();
        assert_eq!(targets, [(0.6, true), (0.4, true)]);

        let text = report.render_text();
        assert!(text.contains("h1 c16 proxy"), "{text}");
        assert!(text.contains("+50.0 1.50×"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["scenarios"][1]["measured"]["versus_direct"]["throughput_ratio"],
            0.6
        );
    }

    #[test]
    fn the_report_says_where_the_proxies_sent_their_spans() {
        use crate::bench::collector::BrokenCollector;
        let measured = || {
            vec![(
                scenario(Topology::Direct),
                Ok(measurement(50_000, 100.0, 0)),
            )]
        };
        let report = Report::new(settings(), measured(), None);
        assert!(report.render_text().contains("proxy tracing: off"));
        let mut stalled = settings();
        stalled.otlp = OtlpSetting::Broken {
            collector: BrokenCollector::Stalled,
            endpoint: "http://127.0.0.1:9".into(),
        };
        let report = Report::new(stalled, measured(), None);
        let text = report.render_text();
        assert!(
            text.contains("STALLED collector (http://127.0.0.1:9"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["settings"]["otlp"]["mode"], "broken");
        assert_eq!(json["settings"]["otlp"]["collector"], "stalled");
    }

    #[test]
    fn a_failed_scenario_is_reported_and_fails_the_run() {
        let report = Report::new(
            settings(),
            vec![
                (
                    scenario(Topology::Direct),
                    Ok(measurement(50_000, 100.0, 0)),
                ),
                (
                    scenario(Topology::Proxy),
                    Err(anyhow::anyhow!("proxy exited")),
                ),
            ],
            Some(Err("no proxy".into())),
        );
        assert!(!report.all_measured());
        let text = report.render_text();
        assert!(
            text.contains("h1 c16 proxy: FAILED: proxy exited"),
            "{text}"
        );
        assert!(text.contains("FAILED: no proxy"), "{text}");
        assert!(report.targets.is_empty(), "no figure, no verdict");
    }

    #[test]
    fn new_connection_costs_are_compared_with_nginx_and_judged() {
        let times = |mean_us: f64| HandshakeTimes {
            count: 500,
            mean_us,
            p50_us: mean_us,
            p99_us: 2.0 * mean_us,
        };
        let mut report = Report::new(settings(), Vec::new(), None);
        report.set_handshakes(Some(Ok(HandshakeCosts::new(
            times(1_800.0),
            Ok(times(1_000.0)),
        ))));
        assert!(report.all_measured());
        let targets: Vec<(f64, bool)> =
            report.targets.iter().map(|t| (t.measured, t.met)).collect();
        assert_eq!(targets, [(1.8, false)]);
        let text = report.render_text();
        assert!(text.contains("server proxy (mTLS): mean 1800 µs"), "{text}");
        assert!(text.contains("proxy / nginx (mean): 1.80×"), "{text}");

        // Without nginx the proxy's figure stands alone, with no verdict.
        report.set_handshakes(Some(Ok(HandshakeCosts::new(
            times(1_800.0),
            Err("nginx is not installed".into()),
        ))));
        assert!(report.targets.is_empty());
        assert!(report.all_measured());
        let text = report.render_text();
        assert!(
            text.contains("nginx: not measured: nginx is not installed"),
            "{text}"
        );

        report.set_handshakes(Some(Err("controller exited".into())));
        assert!(!report.all_measured());
    }

    #[test]
    fn rounds_add_up_and_merge_latencies() {
        let round = |micros: u64, requests: u64, rss_kib: u64| {
            let mut histogram = LatencyHistogram::new();
            for _ in 0..requests {
                histogram.record(std::time::Duration::from_micros(micros));
            }
            let proxy = ProcessCost {
                role: "proxy",
                cpu_s: 1.5,
                memory: Memory {
                    rss_kib,
                    peak_rss_kib: rss_kib,
                },
            };
            Measurement::new(5.0, histogram, 1, None, 2.0, 1.0, vec![proxy])
        };
        let mut merged = round(100, 300, 7_000);
        let mut second = round(300, 100, 6_000);
        second.first_error = Some("answered 502".into());
        merged.merge(second).unwrap();
        assert_eq!(
            (merged.seconds, merged.completed, merged.errors),
            (10.0, 400, 2)
        );
        assert_eq!(merged.requests_per_sec(), 40.0);
        assert!(
            (merged.latency.p50_us - 100.0).abs() < 0.1,
            "{:?}",
            merged.latency
        );
        assert!(
            (merged.latency.p99_us - 300.0).abs() < 0.5,
            "{:?}",
            merged.latency
        );
        assert_eq!(merged.first_error.as_deref(), Some("answered 502"));
        assert_eq!((merged.loadgen_cpu_s, merged.upstream_cpu_s), (4.0, 2.0));
        assert_eq!(merged.proxy_cpu_s(), Some(3.0));
        assert_eq!(merged.proxy_memory().map(|m| m.rss_kib), Some(7_000));
    }

    #[test]
    fn targets_are_judged_on_the_right_figures() {
        let one_connection = |topology| Scenario {
            connections: 1,
            ..scenario(topology)
        };
        let report = Report::new(
            settings(),
            vec![
                (
                    one_connection(Topology::Direct),
                    Ok(measurement(50_000, 10.0, 0)),
                ),
                (
                    one_connection(Topology::Proxy),
                    Ok(measurement(40_000, 55.0, 1)),
                ),
                (
                    scenario(Topology::Direct),
                    Ok(measurement(100_000, 100.0, 0)),
                ),
                (scenario(Topology::Proxy), Ok(measurement(45_000, 150.0, 1))),
            ],
            Some(Ok(RssAfterRequests {
                requests: 100_000,
                errors: 0,
                connections: 16,
                memory: Memory {
                    rss_kib: 7 * 1024,
                    peak_rss_kib: 8 * 1024,
                },
            })),
        );
        let verdicts: Vec<(f64, bool)> =
            report.targets.iter().map(|t| (t.measured, t.met)).collect();
        assert_eq!(verdicts, [(0.45, false), (45.0, false), (7.0, true)]);
        let text = report.render_text();
        assert!(text.contains("MISSED"), "{text}");
    }
}
