//! Metrics reported by `train`, `evaluate` and `predict`.

/// Share of predictions equal to the truth.
pub fn accuracy(predicted: &[i64], truth: &[i64]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    let hits = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    hits as f64 / truth.len() as f64
}

pub fn mse(predicted: &[f64], truth: &[f64]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| (p - t).powi(2))
        .sum::<f64>()
        / truth.len() as f64
}

pub fn rmse(predicted: &[f64], truth: &[f64]) -> f64 {
    mse(predicted, truth).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 2, 0, 0]), 0.5);
        assert_eq!(mse(&[1.0, 3.0], &[0.0, 1.0]), 2.5);
        assert_eq!(rmse(&[2.0], &[0.0]), 2.0);
    }
}
