//! The multi-layer perceptron both `train` and `predict` build.

use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::error::JobError;

/// Builds `input → hidden… → output` with ReLU between layers. Variable names
/// are fixed (`hidden0`, …, `output`) because saved weights are matched by name.
pub fn mlp(root: &nn::Path, input: i64, hidden: &[i64], output: i64) -> nn::Sequential {
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

/// A new zeroed `rows × width` f32 tensor, filled in place by `fill`: the
/// matrix is built once, in the tensor's own memory.
pub fn matrix<T>(
    rows: usize,
    width: usize,
    fill: impl FnOnce(&mut [f32]) -> Result<T, JobError>,
) -> Result<(Tensor, T), JobError> {
    // Fallible: libtorch reports a failed allocation as an error, which
    // becomes `data_too_large` rather than a crashed worker.
    let x =
        Tensor::f_zeros([rows as i64, width as i64], (Kind::Float, Device::Cpu)).map_err(|e| {
            JobError::new(
                crate::ErrorCode::DataTooLarge,
                format!(
                    "not enough memory for a {rows} × {width} matrix: {}",
                    e.to_string().lines().next().unwrap_or("")
                ),
            )
        })?;
    let len = rows * width;
    let mut empty = [];
    let out: &mut [f32] = if len == 0 {
        &mut empty
    } else {
        // SAFETY: `x` was just created as a contiguous f32 CPU tensor of
        // exactly `len` elements; nothing else refers to its storage, and
        // the slice is gone before `x` is returned, while `x` owns the memory.
        unsafe { std::slice::from_raw_parts_mut(x.data_ptr() as *mut f32, len) }
    };
    let filled = fill(out)?;
    Ok((x, filled))
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
