//! Fixed-rate (open-loop) pacing, as wrk2 does it: each request has an
//! intended send time on a fixed grid, and its latency is measured from that
//! time, so a stalled server is charged for the requests it kept from being
//! sent (no coordinated omission).

use std::time::Duration;

use tokio::time::Instant;

/// The intended send times of one connection's requests: `first`, then one every
/// `interval_secs`. Each is computed from the start in floating point (exact to the
/// nanosecond for days), so a rate whose interval is not a whole number of
/// nanoseconds never drifts.
#[derive(Clone, Debug)]
pub struct FixedRateSchedule {
    start: Instant,
    offset_secs: f64,
    interval_secs: f64,
    issued: u64,
}

impl FixedRateSchedule {
    /// Connection `index` of `connections` sharing `rate_per_sec` requests per
    /// second: each runs at `rate / connections`, staggered by `1 / rate` so the
    /// requests of all connections together are evenly spaced.
    pub fn for_connection(
        start: Instant,
        rate_per_sec: f64,
        connections: usize,
        index: usize,
    ) -> Self {
        let spacing = 1.0 / rate_per_sec;
        Self {
            start,
            offset_secs: spacing * index as f64,
            interval_secs: spacing * connections.max(1) as f64,
            issued: 0,
        }
    }

    /// The intended send time of the next request.
    pub fn next_send_time(&mut self) -> Instant {
        let since_start = self.offset_secs + self.interval_secs * self.issued as f64;
        self.issued += 1;
        self.start + Duration::from_secs_f64(since_start)
    }
}

/// Where a request's latency is measured from. Late because the connection was
/// still busy with the previous request: from the intended time (the server's
/// delay, charged as wrk2 does). Late although the connection was idle in time:
/// from the actual send (our timer's millisecond granularity, not the server's).
pub fn latency_origin(intended: Instant, previous_done: Instant, sent_at: Instant) -> Instant {
    if previous_done > intended {
        intended
    } else {
        sent_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_connection_charges_the_wait_to_the_server() {
        let intended = Instant::now();
        let previous_done = intended + Duration::from_millis(5);
        let sent_at = previous_done;
        assert_eq!(latency_origin(intended, previous_done, sent_at), intended);
    }

    #[test]
    fn timer_lateness_on_an_idle_connection_is_not_charged() {
        let previous_done = Instant::now();
        let intended = previous_done + Duration::from_millis(1);
        let sent_at = intended + Duration::from_micros(900);
        assert_eq!(latency_origin(intended, previous_done, sent_at), sent_at);
    }

    #[test]
    fn one_connection_sends_at_the_rate() {
        let start = Instant::now();
        let mut schedule = FixedRateSchedule::for_connection(start, 1_000.0, 1, 0);
        let times: Vec<_> = (0..4).map(|_| schedule.next_send_time() - start).collect();
        assert_eq!(
            times,
            [0, 1, 2, 3].map(Duration::from_millis).to_vec(),
            "1,000 req/s is one request per millisecond"
        );
    }

    #[test]
    fn connections_share_the_rate_evenly_staggered() {
        let start = Instant::now();
        let connections = 4;
        let mut all: Vec<Duration> = (0..connections)
            .flat_map(|index| {
                let mut schedule =
                    FixedRateSchedule::for_connection(start, 1_000.0, connections, index);
                (0..250).map(move |_| schedule.next_send_time() - start)
            })
            .collect();
        all.sort();
        // 1,000 requests in one second, one every millisecond, across 4 connections.
        assert_eq!(all.len(), 1_000);
        for (i, at) in all.iter().enumerate() {
            let expected = Duration::from_millis(i as u64);
            let error = at.abs_diff(expected);
            assert!(
                error < Duration::from_micros(1),
                "request {i} at {at:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn no_drift_over_many_requests() {
        let start = Instant::now();
        // 1/3 ms cannot be represented exactly; the millionth request must still be on time.
        let mut schedule = FixedRateSchedule::for_connection(start, 3_000.0, 1, 0);
        let mut last = start;
        for _ in 0..1_000_000 {
            last = schedule.next_send_time();
        }
        let expected = Duration::from_secs_f64(999_999.0 / 3_000.0);
        assert!((last - start).abs_diff(expected) < Duration::from_micros(1));
    }
}
