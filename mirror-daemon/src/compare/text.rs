//! How close two generated texts are, for answers that are not equal.
//!
//! The score is token-level F1 as in SQuAD's evaluation: both texts split on whitespace, the
//! tokens they share counted as a multiset, F1 = 2·P·R / (P + R) with P the shared share of the
//! shadow's tokens and R of production's. It is cheap (linear), standard for judging generated
//! text against a reference, and easy to read: 1.0 equal token bags, 0.0 nothing shared. Unlike
//! SQuAD's, no case folding, punctuation or article removal: a candidate that changes case or
//! punctuation has changed its answer. Two empty texts score 1.0.
use std::collections::HashMap;

/// Token-level F1 of `shadow` against `production`, in [0, 1].
pub fn token_f1(production: &str, shadow: &str) -> f64 {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    let mut prod_tokens = 0usize;
    for token in production.split_whitespace() {
        *counts.entry(token).or_default() += 1;
        prod_tokens += 1;
    }
    let mut shadow_tokens = 0usize;
    let mut shared = 0usize;
    for token in shadow.split_whitespace() {
        shadow_tokens += 1;
        if let Some(n) = counts.get_mut(token)
            && *n > 0
        {
            *n -= 1;
            shared += 1;
        }
    }
    if prod_tokens == 0 && shadow_tokens == 0 {
        return 1.0;
    }
    if shared == 0 {
        return 0.0;
    }
    let precision = shared as f64 / shadow_tokens as f64;
    let recall = shared as f64 / prod_tokens as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_counts_shared_tokens_as_a_multiset() {
        assert_eq!(token_f1("the cat sat", "the cat sat"), 1.0);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("a b", ""), 0.0);
        assert_eq!(token_f1("a b c d", "x y"), 0.0);
        // One word of four changed: P = R = 3/4.
        assert!((token_f1("a b c d", "a b c e") - 0.75).abs() < 1e-12);
        // Repeated tokens count once per occurrence: P = 1/3, R = 1.
        assert!((token_f1("a", "a a a") - 0.5).abs() < 1e-12);
        // Case and punctuation are part of the answer.
        assert!(token_f1("Yes.", "yes") == 0.0);
        assert_eq!(token_f1("b a", "a b"), 1.0, "order is not judged (text_equal is)");
    }
}
