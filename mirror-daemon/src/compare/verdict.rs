//! The outcome of one comparison, shared by the comparison, the records, the metrics and the
//! aggregates.
use serde::{Deserialize, Serialize};

/// What a comparison concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Same status and equivalent bodies.
    Match,
    /// Same status; bodies differ only within the configured numeric tolerance.
    WithinTolerance,
    /// The answers differ.
    Mismatch,
    /// The shadow failed where production did not: a non-2xx status where production was 2xx, a
    /// connection failure, or an answer that is not HTTP.
    ShadowError,
    /// The shadow did not answer within the per-request timeout.
    ShadowTimeout,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Match,
        Verdict::WithinTolerance,
        Verdict::Mismatch,
        Verdict::ShadowError,
        Verdict::ShadowTimeout,
    ];

    /// The snake_case name used in records, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::WithinTolerance => "within_tolerance",
            Verdict::Mismatch => "mismatch",
            Verdict::ShadowError => "shadow_error",
            Verdict::ShadowTimeout => "shadow_timeout",
        }
    }

    /// Whether the two models agreed (for agreement rates).
    pub fn agrees(self) -> bool {
        matches!(self, Verdict::Match | Verdict::WithinTolerance)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for v in Verdict::ALL {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.as_str()));
            assert_eq!(serde_json::from_str::<Verdict>(&json).unwrap(), v);
        }
        assert!(Verdict::WithinTolerance.agrees() && !Verdict::ShadowTimeout.agrees());
    }
}
