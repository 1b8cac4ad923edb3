//! The arithmetic and the text of the demo's summary: what the application saw against
//! what the mesh absorbed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::app::AppStats;
use super::metrics_text::{self, Sample};
use super::topology::{Pod, Role, SPLIT, Topology};
use super::traffic::Outcome;

/// The retry budget the proxies apply when a Service sets none (docs/architecture.md).
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
pub const DEFAULT_BUDGET_PER_SECOND: f64 = 10.0;

const RETRIES_METRIC: &str = "plexus_proxy_retries_total";
const BUDGET_EXHAUSTED_METRIC: &str = "plexus_proxy_retry_budget_exhausted_total";

/// Everything the summary is computed from.
pub struct Inputs<'a> {
    pub topology: &'a Topology,
    pub outcomes: &'a [Outcome],
    pub duration: Duration,
    /// `/stats` of each pod's app; a pod that did not answer is absent.
    pub stats: &'a [(Pod, AppStats)],
    /// The frontend sidecar's `/metrics`; `None` when it could not be read.
    pub frontend_metrics: Option<&'a [Sample]>,
    /// "workload -> server identity" its sidecar verified, with the number of attempts,
    /// from the traces (see `waterfalls::verified_servers`).
    pub verified_servers: &'a BTreeMap<String, u64>,
}

/// What the load driver saw.
#[derive(Debug, Clone, PartialEq)]
pub struct AppView {
    pub requests: u64,
    pub succeeded: u64,
    pub p50: Duration,
    pub p99: Duration,
    /// "200", "503 (plexus-error: timeout)", "no response": count.
    pub answers: BTreeMap<String, u64>,
}

impl AppView {
    pub fn of(outcomes: &[Outcome]) -> AppView {
        // Microseconds, up to an hour: anything longer is recorded as an hour.
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok();
        let mut answers = BTreeMap::new();
        for outcome in outcomes {
            if let Some(histogram) = latencies.as_mut() {
                histogram.saturating_record(outcome.latency.as_micros().max(1) as u64);
            }
            let answer = match (&outcome.status, &outcome.plexus_error) {
                (None, _) => "no response".to_owned(),
                (Some(status), None) => status.to_string(),
                (Some(status), Some(reason)) => format!("{status} (plexus-error: {reason})"),
            };
            *answers.entry(answer).or_default() += 1;
        }
        let at = |q: f64| {
            latencies
                .as_ref()
                .filter(|h| !h.is_empty())
                .map_or(Duration::ZERO, |h| {
                    Duration::from_micros(h.value_at_quantile(q))
                })
        };
        AppView {
            requests: outcomes.len() as u64,
            succeeded: outcomes.iter().filter(|o| o.succeeded()).count() as u64,
            p50: at(0.5),
            p99: at(0.99),
            answers,
        }
    }

    pub fn success_rate(&self) -> f64 {
        ratio(self.succeeded, self.requests)
    }
}

/// Successful answers per backend version, as the frontend reported them.
pub fn split(outcomes: &[Outcome]) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for answer in outcomes.iter().filter(|o| o.succeeded()) {
        let version = answer
            .answer
            .as_ref()
            .and_then(|a| a.backend.get("version"))
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        *versions.entry(version.to_owned()).or_default() += 1;
    }
    versions
}

/// Retries: what the sidecar counted, and what the budget allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// `None`: this proxy build exports no retry counter.
    pub spent: Option<u64>,
    pub refused_by_budget: Option<u64>,
    /// Backend requests beyond one per frontend call: the retries as the apps saw them.
    pub seen_by_apps: Option<u64>,
    /// About the most the default budgets allow over the run: each backend of the split
    /// has its own (20 % of its requests + 10/s).
    pub allowed: u64,
}

impl Retries {
    pub fn of(inputs: &Inputs<'_>) -> Retries {
        let metric = |name| {
            inputs
                .frontend_metrics
                .filter(|samples| metrics_text::has(samples, name))
                .map(|samples| metrics_text::sum(samples, name, &[]) as u64)
        };
        let frontend = inputs.topology.frontend().name;
        let frontend_calls = inputs
            .stats
            .iter()
            .find(|(pod, _)| pod.name == frontend)
            .map(|(_, s)| s.requests);
        let backend_requests: u64 = inputs
            .stats
            .iter()
            .filter(|(pod, _)| pod.name != frontend)
            .map(|(_, s)| s.requests)
            .sum();
        let requests = inputs.outcomes.len() as f64;
        Retries {
            spent: metric(RETRIES_METRIC),
            // A counter family with no sample yet has only its HELP/TYPE lines: nothing
            // was refused, as long as this build counts retries at all.
            refused_by_budget: metric(BUDGET_EXHAUSTED_METRIC)
                .or_else(|| metric(RETRIES_METRIC).map(|_| 0)),
            seen_by_apps: frontend_calls.map(|calls| backend_requests.saturating_sub(calls)),
            allowed: (DEFAULT_BUDGET_RATIO * requests
                + DEFAULT_BUDGET_PER_SECOND * inputs.duration.as_secs_f64() * SPLIT.len() as f64)
                .floor() as u64,
        }
    }
}

/// Callers' identities as each backend saw them (`plexus-client-id`).
pub fn identities(inputs: &Inputs<'_>) -> BTreeMap<String, u64> {
    let mut seen = BTreeMap::new();
    let frontend = inputs.topology.frontend().name;
    for (_, stats) in inputs.stats.iter().filter(|(pod, _)| pod.name != frontend) {
        for (id, count) in &stats.client_ids {
            *seen.entry(id.clone()).or_default() += count;
        }
    }
    seen
}

/// The whole summary text.
pub fn render(inputs: &Inputs<'_>) -> String {
    let mut out = String::new();
    let view = AppView::of(inputs.outcomes);
    let _ = writeln!(out, "What the application saw");
    let _ = writeln!(
        out,
        "  {} requests to the frontend in {:.1} s: {:.1} % succeeded, p50 {}, p99 {}",
        view.requests,
        inputs.duration.as_secs_f64(),
        100.0 * view.success_rate(),
        millis(view.p50),
        millis(view.p99),
    );
    let answers: Vec<String> = view
        .answers
        .iter()
        .map(|(answer, n)| format!("{n} × {answer}"))
        .collect();
    let _ = writeln!(out, "  answers: {}", answers.join(", "));

    let _ = writeln!(out, "\nWhat the backends did (from each app's /stats)");
    for (pod, stats) in inputs
        .stats
        .iter()
        .filter(|(p, _)| p.role.as_str() == "backend")
    {
        let _ = writeln!(
            out,
            "  {:<20} {:>5} requests, {:>4} failed ({:>4.1} %){}",
            pod.name,
            stats.requests,
            stats.failures,
            100.0 * ratio(stats.failures, stats.requests),
            behaviour_note(pod),
        );
    }
    if let Some(flaky) = inputs.topology.flaky()
        && let Some((_, stats)) = inputs.stats.iter().find(|(p, _)| p.name == flaky.name)
    {
        let _ = writeln!(
            out,
            "  raw failure rate of {}: {:.1} %; the application saw {:.1} % failures",
            flaky.name,
            100.0 * ratio(stats.failures, stats.requests),
            100.0 * (1.0 - view.success_rate()),
        );
    }
    if let Some(line) = slow_replica_share(inputs) {
        let _ = writeln!(out, "  {line}");
    }

    let retries = Retries::of(inputs);
    let _ = writeln!(
        out,
        "\nRetries (HTTPRoute retry on 5xx, budget per backend)"
    );
    match retries.spent {
        Some(spent) => {
            let _ = writeln!(
                out,
                "  the frontend's sidecar retried {spent} times ({:.1} % of requests); \
                 the budgets allowed about {} (per backend: 20 % of its requests + 10/s){}",
                100.0 * ratio(spent, view.requests),
                retries.allowed,
                retries
                    .refused_by_budget
                    .map(|n| format!(", {n} refused by it"))
                    .unwrap_or_default(),
            );
        }
        None => {
            let _ = writeln!(out, "  this proxy build exports no retry counter");
        }
    }
    if let Some(seen) = retries.seen_by_apps {
        let _ = writeln!(
            out,
            "  the backends served {seen} requests more than the frontend made (the retries)"
        );
    }

    let versions = split(inputs.outcomes);
    let answered: u64 = versions.values().sum();
    let configured: Vec<String> = SPLIT.iter().map(|(s, w)| format!("{s} {w}")).collect();
    let _ = writeln!(
        out,
        "\nTraffic split (configured: {})",
        configured.join(" / ")
    );
    for (version, n) in &versions {
        let _ = writeln!(
            out,
            "  {version}: {n:>5} answers ({:.1} %)",
            100.0 * ratio(*n, answered)
        );
    }

    let _ = writeln!(out, "\nIdentities");
    let _ = writeln!(
        out,
        "  demo client -> frontend: plaintext (the demo's own client is not meshed)"
    );
    let ids = identities(inputs);
    let meshed: Vec<String> = ids
        .iter()
        .filter(|(id, _)| !id.is_empty())
        .map(|(id, n)| format!("{id} ({n} requests)"))
        .collect();
    if !meshed.is_empty() {
        let _ = writeln!(
            out,
            "  frontend -> backend: mTLS; the backends' sidecars saw the client {}",
            meshed.join(", ")
        );
    }
    for (hop, n) in inputs.verified_servers {
        let _ = writeln!(
            out,
            "  {hop}: server identity verified by the caller's sidecar ({n} attempts in the traces)"
        );
    }
    if meshed.is_empty() && inputs.verified_servers.is_empty() {
        let _ = writeln!(
            out,
            "  frontend -> backend: mTLS: not enabled in this build"
        );
    }
    out
}

/// How much of its version's traffic the slow replica got: the balancer (P2C over
/// peak-EWMA latency) sends less to a slow endpoint than an even spread would.
fn slow_replica_share(inputs: &Inputs<'_>) -> Option<String> {
    let (slow, slow_stats) = inputs
        .stats
        .iter()
        .find(|(p, _)| p.role == Role::Backend && p.behaviour.delay_ms > 0)?;
    let siblings: Vec<&AppStats> = inputs
        .stats
        .iter()
        .filter(|(p, _)| p.role == Role::Backend && p.version == slow.version)
        .map(|(_, s)| s)
        .collect();
    let served: u64 = siblings.iter().map(|s| s.requests).sum();
    Some(format!(
        "{} (+{} ms) served {:.1} % of the {} requests to {} replicas (an even spread: {:.1} %)",
        slow.name,
        slow.behaviour.delay_ms,
        100.0 * ratio(slow_stats.requests, served),
        served,
        slow.workload,
        100.0 / siblings.len() as f64,
    ))
}

fn behaviour_note(pod: &Pod) -> String {
    let mut notes = Vec::new();
    if pod.behaviour.fail_rate > 0.0 {
        notes.push(format!("fails {:.0} %", 100.0 * pod.behaviour.fail_rate));
    }
    if pod.behaviour.delay_ms > 0 {
        notes.push(format!("+{} ms", pod.behaviour.delay_ms));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("   <- {}", notes.join(", "))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::app::FrontendAnswer;
    use serde_json::json;

    fn outcome(ms: u64, status: Option<u16>, version: Option<&str>) -> Outcome {
        Outcome {
            trace_id: "0".repeat(32),
            latency: Duration::from_millis(ms),
            status,
            plexus_error: None,
            answer: version.map(|v| FrontendAnswer {
                pod: "frontend-0".into(),
                backend_status: status.unwrap_or(0),
                backend: json!({ "version": v, "pod": "p" }),
                client_id: None,
            }),
        }
    }

    fn stats(requests: u64, failures: u64, ids: &[(&str, u64)]) -> AppStats {
        AppStats {
            requests,
            failures,
            client_ids: ids.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..AppStats::default()
        }
    }

    #[test]
    fn the_application_view_counts_success_and_percentiles() {
        let mut outcomes: Vec<Outcome> = (1..=98)
            .map(|ms| outcome(ms, Some(200), Some("v1")))
            .collect();
        outcomes.push(outcome(500, Some(503), None));
        outcomes.push(outcome(900, None, None));
        outcomes[0].plexus_error = None;
        outcomes[98].plexus_error = Some("budget-exhausted".into());
        let view = AppView::of(&outcomes);
        assert_eq!(view.requests, 100);
        assert_eq!(view.succeeded, 98);
        assert!((view.success_rate() - 0.98).abs() < 1e-9);
        let p50 = view.p50.as_millis();
        assert!((49..=51).contains(&p50), "p50 {p50}");
        let p99 = view.p99.as_millis();
        assert!((499..=501).contains(&p99), "p99 {p99}");
        assert_eq!(view.answers["200"], 98);
        assert_eq!(view.answers["503 (plexus-error: budget-exhausted)"], 1);
        assert_eq!(view.answers["no response"], 1);
    }

    #[test]
    fn no_outcomes_is_not_a_division_by_zero() {
        let view = AppView::of(&[]);
        assert_eq!(view.success_rate(), 0.0);
        assert_eq!(view.p99, Duration::ZERO);
    }

    #[test]
    fn the_split_counts_successful_answers_by_version() {
        let mut outcomes: Vec<Outcome> =
            (0..8).map(|_| outcome(1, Some(200), Some("v1"))).collect();
        outcomes.extend((0..2).map(|_| outcome(1, Some(200), Some("v2"))));
        outcomes.push(outcome(1, Some(500), Some("v1")));
        let split = split(&outcomes);
        assert_eq!(split["v1"], 8);
        assert_eq!(split["v2"], 2);
    }

    fn with_stats(topology: &Topology, per_pod: [AppStats; 5]) -> Vec<(Pod, AppStats)> {
        topology.pods().iter().cloned().zip(per_pod).collect()
    }

    #[test]
    fn retries_come_from_the_metrics_and_the_apps_and_the_budget_is_computed() {
        let topology = Topology::demo();
        let outcomes: Vec<Outcome> = (0..1000)
            .map(|_| outcome(1, Some(200), Some("v1")))
            .collect();
        let stats = with_stats(
            &topology,
            [
                stats(1000, 0, &[("", 1000)]),
                stats(400, 0, &[]),
                stats(240, 40, &[]),
                stats(160, 0, &[]),
                stats(240, 0, &[]),
            ],
        );
        let samples = metrics_text::parse(
            "plexus_proxy_retries_total{backend=\"a\",reason=\"status\"} 38\n\
             plexus_proxy_retries_total{backend=\"b\",reason=\"timeout\"} 2\n\
             plexus_proxy_retry_budget_exhausted_total{backend=\"a\"} 0\n",
        );
        let inputs = Inputs {
            topology: &topology,
            outcomes: &outcomes,
            duration: Duration::from_secs(20),
            stats: &stats,
            frontend_metrics: Some(&samples),
            verified_servers: &BTreeMap::new(),
        };
        let retries = Retries::of(&inputs);
        assert_eq!(retries.spent, Some(40));
        assert_eq!(retries.refused_by_budget, Some(0));
        assert_eq!(retries.seen_by_apps, Some(40));
        // 20 % of 1000 + 10/s over 20 s, for each of the two backends.
        assert_eq!(retries.allowed, 600);

        let text = render(&inputs);
        assert!(
            text.contains("1000 requests to the frontend in 20.0 s: 100.0 % succeeded"),
            "{text}"
        );
        assert!(
            text.contains("raw failure rate of backend-v1-flaky: 16.7 %"),
            "{text}"
        );
        assert!(
            text.contains(
                "backend-v1-slow (+150 ms) served 20.0 % of the 800 requests to backend-v1 \
                 replicas (an even spread: 33.3 %)"
            ),
            "{text}"
        );
        assert!(
            text.contains("retried 40 times (4.0 % of requests)"),
            "{text}"
        );
        assert!(text.contains("mTLS: not enabled in this build"), "{text}");
    }

    #[test]
    fn identities_are_reported_when_the_backends_saw_them() {
        let topology = Topology::demo();
        let id = "spiffe://cluster.local/ns/demo/sa/frontend";
        let stats = with_stats(
            &topology,
            [
                stats(10, 0, &[("", 10)]),
                stats(5, 0, &[(id, 5)]),
                stats(3, 0, &[(id, 3)]),
                stats(1, 0, &[(id, 1)]),
                stats(2, 0, &[(id, 2)]),
            ],
        );
        let inputs = Inputs {
            topology: &topology,
            outcomes: &[],
            duration: Duration::from_secs(1),
            stats: &stats,
            frontend_metrics: None,
            verified_servers: &BTreeMap::from([(
                "frontend -> spiffe://cluster.local/ns/demo/sa/backend".to_owned(),
                4,
            )]),
        };
        assert_eq!(identities(&inputs)[id], 11);
        assert_eq!(Retries::of(&inputs).spent, None);
        let text = render(&inputs);
        assert!(
            text.contains(&format!(
                "mTLS; the backends' sidecars saw the client {id} (11 requests)"
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "frontend -> spiffe://cluster.local/ns/demo/sa/backend: server identity \
                 verified by the caller's sidecar (4 attempts in the traces)"
            ),
            "{text}"
        );
        assert!(!text.contains("not enabled"), "{text}");
        assert!(
            text.contains("this proxy build exports no retry counter"),
            "{text}"
        );
    }
}
