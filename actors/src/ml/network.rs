//! The multi-layer perceptron both `train` and `predict` build.

use tch::nn::{self, Module};
use tch::Tensor;

/// Builds `input → hidden… → output` with ReLU between layers. Variable names
/// are fixed (`hidden0`, …, `output`) because saved weights are matched by name.
pub fn mlp(root: &nn::Path, input: i64, hidden: &[i64], output: i64) -> impl Module {
    let mut seq = nn::seq();
    let mut width = input;
    for (i, &h) in hidden.iter().enumerate() {
        seq = seq
            .add(nn::linear(
                root / format!("hidden{i}"),
                width,
                h,
                Default::default(),
            ))
            .add_fn(|x| x.relu());
        width = h;
    }
    seq.add(nn::linear(
        root / "output",
        width,
        output,
        Default::default(),
    ))
}

/// Number of weights and biases in such a network.
pub fn parameter_count(input: i64, hidden: &[i64], output: i64) -> i64 {
    let mut total = 0;
    let mut width = input;
    for &h in hidden.iter().chain(std::iter::once(&output)) {
        total += width * h + h;
        width = h;
    }
    total
}

/// A row-major `rows × width` f32 matrix as a tensor.
pub fn matrix(values: &[f32], rows: usize, width: usize) -> Tensor {
    Tensor::from_slice(values).reshape([rows as i64, width as i64])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parameters() {
        // 3*4+4 + 4*2+2
        assert_eq!(parameter_count(3, &[4], 2), 26);
        assert_eq!(parameter_count(3, &[], 1), 4);
    }
}
