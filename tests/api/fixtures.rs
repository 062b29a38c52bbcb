//! Models and images made in Rust for the tests: TorchScript modules traced
//! with tch (no Python), images encoded with `image`, zips with `zip`.

use std::io::{Cursor, Write};

use tch::{CModule, Device, Kind, Tensor};

/// A TorchScript module traced from `f` on `example`, as the bytes
/// `torch.jit.save` would write.
pub fn traced(example: Tensor, mut f: impl FnMut(&Tensor) -> Tensor) -> Vec<u8> {
    let module =
        CModule::create_by_tracing("Fixture", "forward", &[example], &mut |xs| vec![f(&xs[0])])
            .expect("tracing");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.pt");
    module.save(&path).expect("saving");
    std::fs::read(path).unwrap()
}

/// Classifies an image by its dominant colour: the mean of each channel
/// over the image, scaled into logits. Labels: red, green, blue. Reads
/// `side`×`side` RGB images with pixel values in [0, 1].
pub fn colour_model(side: i64) -> Vec<u8> {
    let example = Tensor::zeros([2, 3, side, side], (Kind::Float, Device::Cpu));
    traced(example, |x| {
        x.mean_dim([2i64, 3].as_slice(), false, Kind::Float) * 20.0
    })
}

/// Traced for `side`×`side` images with the batch size fixed at 2: any
/// other shape makes it throw inside libtorch.
pub fn rigid_model(side: i64) -> Vec<u8> {
    let example = Tensor::zeros([2, 3, side, side], (Kind::Float, Device::Cpu));
    let w = Tensor::ones([3 * side * side, 3], (Kind::Float, Device::Cpu));
    traced(example, move |x| x.reshape([2, 3 * side * side]).matmul(&w))
}

/// Returns five scores per image whatever the spec says.
pub fn five_class_model(side: i64) -> Vec<u8> {
    let example = Tensor::zeros([2, 3, side, side], (Kind::Float, Device::Cpu));
    traced(example, |x| {
        x.mean_dim([2i64, 3].as_slice(), false, Kind::Float)
            .repeat([1, 2])
            .narrow(1, 0, 5)
    })
}

/// A tabular classifier of two numeric columns: class 1 when x > y.
pub fn tabular_model() -> Vec<u8> {
    let example = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    let w = Tensor::from_slice(&[-1.0f32, 1.0, 1.0, -1.0]).reshape([2, 2]);
    traced(example, move |x| x.matmul(&w) * 10.0)
}

/// A tabular model that adds the first bytes of a server file to its
/// output: what a hostile upload would use to read the server's files.
pub fn file_reading_model(path: &str) -> Vec<u8> {
    let example = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    let path = path.to_owned();
    traced(example, move |x| {
        let stolen = Tensor::from_file(&path, false, 2, (Kind::Uint8, Device::Cpu));
        x + stolen.to_kind(Kind::Float)
    })
}

/// A PNG of `width`×`height` whose pixel at (x, y) is `colour(x, y)`.
pub fn png(width: u32, height: u32, colour: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb(colour(x, y)));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The same picture as another format.
pub fn encoded(png_bytes: &[u8], format: image::ImageFormat) -> Vec<u8> {
    let img = image::load_from_memory(png_bytes).unwrap();
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A zip of `(path, bytes)` entries.
pub fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        out.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        out.write_all(bytes).unwrap();
    }
    out.finish().unwrap().into_inner()
}

pub const RED: [u8; 3] = [230, 20, 20];
pub const GREEN: [u8; 3] = [20, 230, 20];
pub const BLUE: [u8; 3] = [20, 20, 230];

/// The shapes `shape_image` draws: the classes of the image-training tests.
pub const SHAPES: [&str; 3] = ["disc", "horizontal", "vertical"];

/// A synthetic labelled image: a disc, horizontal bars or vertical bars in
/// a random colour on a random background, with pixel noise, at a random
/// size, so neither colour nor size gives the class away.
pub fn shape_image(shape: &str, rng: &mut impl rand::Rng) -> Vec<u8> {
    let (w, h) = (rng.random_range(24..48), rng.random_range(24..48));
    let ink: [u8; 3] = [rng.random(), rng.random(), rng.random()];
    // The background differs from the ink by at least 100 in brightness.
    let paper = ink.map(|c| c.wrapping_add(128));
    let (cx, cy, r) = (w as f32 / 2.0, h as f32 / 2.0, w.min(h) as f32 / 3.0);
    let period = rng.random_range(4..8);
    let mut noise = Vec::with_capacity((w * h) as usize);
    for _ in 0..w * h {
        noise.push(rng.random_range(-30i16..30));
    }
    let on = |x: u32, y: u32| match shape {
        "disc" => ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt() < r,
        "horizontal" => (y / (period / 2)).is_multiple_of(2),
        "vertical" => (x / (period / 2)).is_multiple_of(2),
        other => panic!("no shape {other}"),
    };
    png(w, h, |x, y| {
        let base = if on(x, y) { ink } else { paper };
        let n = noise[(y * w + x) as usize];
        base.map(|c| (c as i16 + n).clamp(0, 255) as u8)
    })
}
