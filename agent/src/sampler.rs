//! Consistent probability sampling (OpenTelemetry `th`/`rv` rules).
//!
//! Randomness R is the trace id's low 56 bits, or `rv` from the span's tracestate; the
//! rejection threshold is T = (1 - p) * 2^56; a span is kept when R >= T. Because every agent
//! derives R from the trace alone, agents at the same ratio keep or drop a trace whole, and
//! what a lower ratio keeps is a subset of what a higher one keeps (T only grows as p falls).

use super::tracestate::{self, MAX};

/// A sampling ratio turned into a rejection threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// Keep spans whose randomness is at least this value (0 keeps everything).
    Keep(u64),
    /// Ratio 0 (or too small to express in 56 bits): keep nothing.
    Never,
}

impl Threshold {
    pub fn for_ratio(ratio: f64) -> Threshold {
        if ratio.is_nan() || ratio <= 0.0 {
            return Threshold::Never;
        }
        if ratio >= 1.0 {
            return Threshold::Keep(0);
        }
        // p * 2^56 is exact to f64 precision; rounding keeps the map monotone in p.
        let kept = (ratio * MAX as f64).round() as u64;
        if kept == 0 {
            return Threshold::Never;
        }
        Threshold::Keep(MAX - kept.min(MAX))
    }
}

/// The decision for one span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep the span; `Some(ts)` when its tracestate must be rewritten to record the threshold.
    Keep(Option<String>),
    Drop,
}

/// The trace id's low 56 bits (bytes 9..16), or `None` for a trace id that is not 16 bytes.
pub fn trace_randomness(trace_id: &[u8]) -> Option<u64> {
    let bytes: &[u8; 16] = trace_id.try_into().ok()?;
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&bytes[9..16]);
    Some(u64::from_be_bytes(low))
}

/// Decide one span. `trace_id` must be 16 bytes (callers reject others before sampling).
pub fn decide(threshold: Threshold, trace_id: &[u8], trace_state: &str) -> Decision {
    let Threshold::Keep(ours) = threshold else { return Decision::Drop };
    // Ratio 1: leave spans exactly as the SDK sent them (no `th:0` on every span).
    if ours == 0 {
        return Decision::Keep(None);
    }
    let ot = tracestate::ot_fields(trace_state);
    let Some(randomness) = ot.randomness.or_else(|| trace_randomness(trace_id)) else {
        return Decision::Drop;
    };
    let upstream = ot.threshold.unwrap_or(0);
    let effective = upstream.max(ours);
    if randomness < effective {
        return Decision::Drop;
    }
    // Only ever raise a threshold recorded upstream.
    let rewrite =
        (effective > upstream || ot.threshold.is_none()).then(|| tracestate::with_threshold(trace_state, effective));
    Decision::Keep(rewrite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trace_id_with_randomness(r: u64) -> [u8; 16] {
        let mut id = [0xabu8; 16];
        id[8..].copy_from_slice(&r.to_be_bytes());
        id[8] = 0x11; // byte 8 is not part of the randomness
        id
    }

    #[test]
    fn threshold_for_common_ratios() {
        assert_eq!(Threshold::for_ratio(1.0), Threshold::Keep(0));
        assert_eq!(Threshold::for_ratio(0.5), Threshold::Keep(0x80_0000_0000_0000));
        assert_eq!(Threshold::for_ratio(0.25), Threshold::Keep(0xc0_0000_0000_0000));
        assert_eq!(Threshold::for_ratio(0.0), Threshold::Never);
        assert_eq!(Threshold::for_ratio(1e-30), Threshold::Never);
        assert_eq!(Threshold::for_ratio(f64::NAN), Threshold::Never);
    }

    #[test]
    fn randomness_is_the_low_56_bits() {
        let id = trace_id_with_randomness(0x0012_3456_789a_bcde);
        assert_eq!(trace_randomness(&id), Some(0x12_3456_789a_bcde));
        assert_eq!(trace_randomness(&[0u8; 8]), None);
    }

    #[test]
    fn keeps_at_or_above_threshold_and_records_it() {
        let t = Threshold::for_ratio(0.5);
        assert_eq!(
            decide(t, &trace_id_with_randomness(0x80_0000_0000_0000), ""),
            Decision::Keep(Some("ot=th:8".into()))
        );
        assert_eq!(decide(t, &trace_id_with_randomness(0x7f_ffff_ffff_ffff), ""), Decision::Drop);
    }

    #[test]
    fn ratio_one_leaves_spans_untouched() {
        assert_eq!(decide(Threshold::Keep(0), &trace_id_with_randomness(0), "a=b"), Decision::Keep(None));
    }

    #[test]
    fn ratio_zero_drops_everything() {
        assert_eq!(decide(Threshold::Never, &trace_id_with_randomness(MAX - 1), ""), Decision::Drop);
    }

    #[test]
    fn explicit_rv_wins_over_trace_id() {
        let t = Threshold::for_ratio(0.5);
        let low = trace_id_with_randomness(0);
        assert_eq!(decide(t, &low, "ot=rv:ffffffffffffff"), Decision::Keep(Some("ot=th:8;rv:ffffffffffffff".into())));
    }

    #[test]
    fn higher_upstream_threshold_is_kept_not_lowered() {
        // Upstream sampled at 1/4 (th:c); we sample at 1/2: effective threshold stays c.
        let t = Threshold::for_ratio(0.5);
        let id = trace_id_with_randomness(0xd0_0000_0000_0000);
        assert_eq!(decide(t, &id, "ot=th:c"), Decision::Keep(None));
        let below = trace_id_with_randomness(0xb0_0000_0000_0000);
        assert_eq!(decide(t, &below, "ot=th:c"), Decision::Drop);
    }

    #[test]
    fn lower_upstream_threshold_is_raised() {
        let t = Threshold::for_ratio(0.25);
        let id = trace_id_with_randomness(0xd0_0000_0000_0000);
        assert_eq!(decide(t, &id, "x=y,ot=th:8"), Decision::Keep(Some("ot=th:c,x=y".into())));
    }

    proptest! {
        #[test]
        fn lower_ratio_keeps_a_subset(r in 0u64..MAX, a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let id = trace_id_with_randomness(r);
            if decide(Threshold::for_ratio(lo), &id, "") != Decision::Drop {
                prop_assert_ne!(decide(Threshold::for_ratio(hi), &id, ""), Decision::Drop);
            }
        }

        #[test]
        fn recorded_threshold_never_decreases(r in 0u64..MAX, up in 0u64..MAX, p in 0.0f64..=1.0) {
            let id = trace_id_with_randomness(r);
            let ts = format!("ot=th:{}", tracestate::format_threshold(up));
            if let Decision::Keep(new) = decide(Threshold::for_ratio(p), &id, &ts) {
                let recorded = tracestate::ot_fields(new.as_deref().unwrap_or(&ts)).threshold;
                prop_assert!(recorded.is_some_and(|t| t >= up));
            }
        }
    }

    #[test]
    fn kept_fraction_matches_ratio() {
        // 20k pseudo-random trace ids; binomial sd at p=0.1 is ~0.0021, bound at 5 sd.
        let mut rng = fastrand::Rng::with_seed(7);
        for p in [0.1, 0.5] {
            let t = Threshold::for_ratio(p);
            let n = 20_000;
            let kept = (0..n).filter(|_| decide(t, &rng.u128(..).to_be_bytes(), "") != Decision::Drop).count();
            let frac = kept as f64 / n as f64;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((frac - p).abs() < 5.0 * sd, "p={p} kept {frac}");
        }
    }
}
