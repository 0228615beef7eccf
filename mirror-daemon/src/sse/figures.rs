//! The timing of a streamed answer, with the names and definitions of vLLM's serving benchmark:
//!
//! - **TTFT** (time to first token): the first event carrying generated content − the request's
//!   last byte;
//! - **ITL** (inter-token latency): the gaps between consecutive content events;
//! - **TPOT** (time per output token): (E2E − TTFT) / (output tokens − 1), with the output tokens
//!   the server reported (usage chunk) when it did, else the content events counted;
//! - **E2E**: the answer's last byte − the request's last byte.
//!
//! Production's figures come from kernel timestamps at the capture point; the shadow's from the
//! replay client's clock as the stream arrived (they include the replay's own network hop).

use super::answer::StreamedAnswer;

/// Where the output token count came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokensFrom {
    /// The server's usage report.
    Usage,
    /// Content events counted (one token each, as most servers send).
    Events,
}

impl TokensFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            TokensFrom::Usage => "usage",
            TokensFrom::Events => "events",
        }
    }
}

/// p50, p95 and max of a set of durations (ns), nearest-rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

impl Spread {
    /// `None` for an empty set.
    pub fn of(values: &mut [u64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let rank = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Some(Self { p50: rank(0.5), p95: rank(0.95), max: values[values.len() - 1] })
    }
}

/// `ns` rounded to two significant digits (within 5%): how inter-token gaps are kept, so that a
/// stream's gaps take a few distinct values however many there are.
pub fn two_digits(ns: u64) -> u64 {
    let mut scale = 1u64;
    while ns / scale >= 100 {
        scale *= 10;
    }
    (ns + scale / 2) / scale * scale
}

/// The timing of one streamed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFigures {
    /// `None` when no event carried content.
    pub ttft_ns: Option<u64>,
    /// `None` with fewer than two content events.
    pub itl: Option<Spread>,
    /// Every inter-token gap, rounded by [`two_digits`], as (gap ns, how many), ascending: what
    /// aggregates pool across streams (vLLM's ITL percentiles are over all gaps of all requests).
    pub itl_gaps: Vec<(u64, u64)>,
    /// `None` unless there were at least two output tokens and a first token.
    pub tpot_ns: Option<u64>,
    pub e2e_ns: u64,
    pub output_tokens: u64,
    pub tokens_from: TokensFrom,
    pub events: u64,
}

impl StreamFigures {
    /// The figures of `answer`, whose request was complete at `request_last_ns` and whose last byte
    /// was seen at `end_ns` (the same clock as the answer's content times).
    pub fn of(answer: &StreamedAnswer, request_last_ns: u64, end_ns: u64) -> Self {
        let times = &answer.content_times;
        let ttft_ns = times.first().map(|t| t.saturating_sub(request_last_ns));
        let mut gaps: Vec<u64> = times.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
        let e2e_ns = end_ns.saturating_sub(request_last_ns);
        let (output_tokens, tokens_from) = match answer.completion_tokens {
            Some(tokens) => (tokens, TokensFrom::Usage),
            None => (times.len() as u64, TokensFrom::Events),
        };
        let tpot_ns = ttft_ns
            .filter(|_| output_tokens > 1)
            .map(|ttft| e2e_ns.saturating_sub(ttft) / (output_tokens - 1));
        let itl = Spread::of(&mut gaps);
        // Sorted by `Spread::of`; rounding keeps the order.
        let mut itl_gaps: Vec<(u64, u64)> = Vec::new();
        for gap in gaps.into_iter().map(two_digits) {
            match itl_gaps.last_mut() {
                Some((value, count)) if *value == gap => *count += 1,
                _ => itl_gaps.push((gap, 1)),
            }
        }
        Self { ttft_ns, itl, itl_gaps, tpot_ns, e2e_ns, output_tokens, tokens_from, events: answer.events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_the_benchmark_definitions() {
        let answer =
            StreamedAnswer { content_times: vec![150, 160, 180, 190], events: 6, ..Default::default() };
        let f = StreamFigures::of(&answer, 100, 200);
        assert_eq!(f.ttft_ns, Some(50));
        assert_eq!(f.itl, Some(Spread { p50: 10, p95: 20, max: 20 }));
        assert_eq!(f.itl_gaps, vec![(10, 2), (20, 1)]);
        assert_eq!(f.e2e_ns, 100);
        assert_eq!((f.output_tokens, f.tokens_from), (4, TokensFrom::Events));
        assert_eq!(f.tpot_ns, Some((100 - 50) / 3));
        let reported = StreamedAnswer { completion_tokens: Some(11), ..answer.clone() };
        let f = StreamFigures::of(&reported, 100, 200);
        assert_eq!((f.output_tokens, f.tokens_from, f.tpot_ns), (11, TokensFrom::Usage, Some(5)));
        let nothing = StreamFigures::of(&StreamedAnswer::default(), 100, 120);
        assert_eq!((nothing.ttft_ns, nothing.itl, nothing.tpot_ns, nothing.e2e_ns), (None, None, None, 20));
    }

    #[test]
    fn gaps_keep_two_significant_digits() {
        assert_eq!(
            [0, 7, 99, 104, 105, 20_499_000, 20_500_000].map(two_digits),
            [0, 7, 99, 100, 110, 20_000_000, 21_000_000]
        );
        let times: Vec<u64> = [0, 20_100_000, 40_000_000, 60_400_000, 60_400_000].to_vec();
        let answer = StreamedAnswer { content_times: times, ..Default::default() };
        let f = StreamFigures::of(&answer, 0, 70_000_000);
        assert_eq!(f.itl_gaps, vec![(0, 1), (20_000_000, 3)]);
    }

    #[test]
    fn spread_is_nearest_rank() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(Spread::of(&mut v), Some(Spread { p50: 50, p95: 95, max: 100 }));
        assert_eq!(Spread::of(&mut [7]), Some(Spread { p50: 7, p95: 7, max: 7 }));
        assert_eq!(Spread::of(&mut []), None);
    }
}
