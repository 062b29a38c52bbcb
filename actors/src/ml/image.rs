//! Images into tensors: decoding with limits, the optional region, resizing
//! per a model's input description, and normalisation.
//!
//! Every image comes from an uploader, so decoding is bounded before memory
//! is spent: the file size, the pixel count (read from the header first) and
//! the decoder's own allocations are capped, so a decompression bomb fails
//! that file with a clear error instead of taking the worker's memory.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, ImageReader, Limits};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most bytes of one encoded image.
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;
/// Most pixels of one decoded image (about 40 megapixels).
pub const MAX_PIXELS: u64 = 40_000_000;
/// Most bytes the decoder may allocate for one image.
pub const MAX_DECODER_ALLOC: u64 = 512 << 20;
/// Largest model input side.
pub const MAX_INPUT_SIDE: u32 = 4096;
/// Largest side of an image read: a 40-megapixel image 40 million pixels
/// wide would pass the pixel cap, and resizing it would not.
pub const MAX_SIDE: u32 = 1 << 16;
/// Most pixels in a resize's intermediate (a pass over one axis keeps 16
/// bytes a pixel): 256 MiB.
pub const MAX_RESIZE_PIXELS: u64 = 1 << 24;

/// How an image (or its region) is brought to the model's input size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Scaled to the input size exactly; the aspect ratio is not kept.
    #[default]
    Stretch,
    /// Scaled to fit inside the input size, aspect kept, padded with black.
    Fit,
    /// Scaled to cover the input size, aspect kept, and centre-cropped.
    Crop,
}

/// What a model that reads images expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    pub width: u32,
    pub height: u32,
    /// 1 (grayscale) or 3 (RGB). Alpha is dropped, as PIL's `convert` does.
    pub channels: u8,
    /// Per channel, on pixel values scaled to [0, 1].
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    #[serde(default)]
    pub resize: Resize,
}

impl ImageInput {
    /// Values in one encoded image.
    pub fn numel(&self) -> usize {
        self.channels as usize * self.width as usize * self.height as usize
    }

    pub fn shape(&self, batch: i64) -> [i64; 4] {
        [
            batch,
            self.channels as i64,
            self.height as i64,
            self.width as i64,
        ]
    }

    /// Checks the description itself, naming the field at fault.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, side) in [("width", self.width), ("height", self.height)] {
            if !(1..=MAX_INPUT_SIDE).contains(&side) {
                return Err((
                    field,
                    format!("must be between 1 and {MAX_INPUT_SIDE}, got {side}"),
                ));
            }
        }
        if !matches!(self.channels, 1 | 3) {
            return Err(("channels", format!("must be 1 or 3, got {}", self.channels)));
        }
        let n = self.channels as usize;
        if self.mean.len() != n {
            return Err((
                "mean",
                format!("needs one value per channel ({n}), got {}", self.mean.len()),
            ));
        }
        if self.std.len() != n {
            return Err((
                "std",
                format!("needs one value per channel ({n}), got {}", self.std.len()),
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(("mean", format!("must be finite, got {m}")));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(("std", format!("must be positive and finite, got {s}")));
        }
        Ok(())
    }
}

/// A point in an image's own pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub x: u32,
    pub y: u32,
}

/// A rectangle a user drew, in the original image's pixels. The corners may
/// come in any order; the box spans from the smaller to the larger
/// coordinate on each axis (the larger one excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub top_left: Point,
    pub bottom_right: Point,
}

/// A region with its corners in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Region {
    pub fn normalized(&self) -> Rect {
        let (a, b) = (self.top_left, self.bottom_right);
        Rect {
            x: a.x.min(b.x),
            y: a.y.min(b.y),
            width: a.x.abs_diff(b.x),
            height: a.y.abs_diff(b.y),
        }
    }

    /// The part of an image of `width` × `height` it covers.
    pub fn within(&self, width: u32, height: u32) -> Result<Rect, String> {
        let r = self.normalized();
        if r.width == 0 || r.height == 0 {
            return Err(format!(
                "the region {}×{} at ({}, {}) has no area",
                r.width, r.height, r.x, r.y
            ));
        }
        let right = r.x as u64 + r.width as u64;
        let bottom = r.y as u64 + r.height as u64;
        if right > width as u64 || bottom > height as u64 {
            return Err(format!(
                "the region from ({}, {}) to ({right}, {bottom}) does not fit in the image, \
                 which is {width}×{height}",
                r.x, r.y
            ));
        }
        Ok(r)
    }
}

/// Why one image could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageFailure {
    pub code: &'static str,
    pub message: String,
}

impl ImageFailure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Decodes one image held in memory, within the limits.
pub fn decode_bytes(bytes: &[u8]) -> Result<DynamicImage, ImageFailure> {
    let len = bytes.len() as u64;
    if len == 0 {
        return Err(ImageFailure::new("empty_file", "the file is empty"));
    }
    if len > MAX_IMAGE_BYTES {
        return Err(ImageFailure::new(
            "image_too_large",
            format!("the file has {len} bytes; an image may have at most {MAX_IMAGE_BYTES}"),
        ));
    }
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageFailure::new("invalid_image", format!("reading the file: {e}")))
    };
    if reader()?.format().is_none() {
        return Err(ImageFailure::new(
            "invalid_image",
            "not an image mlq reads: PNG, JPEG, BMP, GIF or WebP",
        ));
    }
    // The header alone first: a bomb is refused before any pixel is made.
    let (w, h) = reader()?.into_dimensions().map_err(describe)?;
    if w as u64 * h as u64 > MAX_PIXELS || w > MAX_SIDE || h > MAX_SIDE {
        return Err(too_many_pixels(w, h));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_ALLOC);
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    let mut reader = reader()?;
    reader.limits(limits);
    reader.decode().map_err(describe)
}

fn too_many_pixels(width: u32, height: u32) -> ImageFailure {
    ImageFailure::new(
        "image_too_large",
        format!(
            "the image is {width}×{height} pixels; at most {} million pixels, and {MAX_SIDE} \
             on a side, are read",
            MAX_PIXELS / 1_000_000
        ),
    )
}

/// Refuses a resize whose intermediate image would be huge: a very long,
/// thin image scaled to cover a square input is billions of pixels.
fn check_resize(w: u32, h: u32, input: &ImageInput) -> Result<(), ImageFailure> {
    let (tw, th) = (input.width as u64, input.height as u64);
    let (w, h) = (w.max(1) as u64, h.max(1) as u64);
    // The size the image is scaled to before any crop or padding.
    let (sw, sh) = match input.resize {
        Resize::Stretch => (tw, th),
        Resize::Fit => {
            let s = (tw as f64 / w as f64).min(th as f64 / h as f64);
            ((w as f64 * s).ceil() as u64, (h as f64 * s).ceil() as u64)
        }
        Resize::Crop => {
            let s = (tw as f64 / w as f64).max(th as f64 / h as f64);
            ((w as f64 * s).ceil() as u64, (h as f64 * s).ceil() as u64)
        }
    };
    // A separable resize makes (source width × new height) or (new width
    // × source height) first, and the scaled image itself.
    let worst = (w * sh).max(sw * h).max(sw * sh);
    if worst > MAX_RESIZE_PIXELS {
        return Err(ImageFailure::new(
            "image_too_large",
            format!(
                "a {w}×{h} image is too long and thin to bring to {tw}×{th} ({:?}); crop it, \
                 or give a region",
                input.resize
            ),
        ));
    }
    Ok(())
}

fn describe(e: image::ImageError) -> ImageFailure {
    use image::ImageError as E;
    match e {
        E::Limits(l) => ImageFailure::new(
            "image_too_large",
            format!("decoding the image would pass mlq's limits: {l}"),
        ),
        E::Unsupported(u) => ImageFailure::new("invalid_image", format!("unsupported image: {u}")),
        other => ImageFailure::new(
            "invalid_image",
            crate::error::truncate(format!("the image is corrupt: {other}"), 512),
        ),
    }
}

/// The model's input for one image: cropped to `region`, brought to the
/// input size, converted to its channels and normalised, in CHW order.
pub fn encode(
    image: &DynamicImage,
    region: Option<&Region>,
    input: &ImageInput,
) -> Result<Vec<f32>, ImageFailure> {
    let (w, h) = image.dimensions();
    let cropped;
    let source = match region {
        Some(region) => {
            let r = region
                .within(w, h)
                .map_err(|m| ImageFailure::new("invalid_region", m))?;
            cropped = image.crop_imm(r.x, r.y, r.width, r.height);
            &cropped
        }
        None => image,
    };
    let (sw, sh) = source.dimensions();
    check_resize(sw, sh, input)?;
    let sized = resize(source, input);
    let mut out = Vec::new();
    out.try_reserve_exact(input.numel()).map_err(|_| {
        ImageFailure::new("data_too_large", "not enough memory for the model's input")
    })?;
    let plane = input.width as usize * input.height as usize;
    if input.channels == 1 {
        let gray = sized.to_luma8();
        let (m, s) = (input.mean[0], input.std[0]);
        out.extend(gray.as_raw().iter().map(|&v| (v as f32 / 255.0 - m) / s));
    } else {
        let rgb = sized.to_rgb8();
        let raw = rgb.as_raw();
        for c in 0..3 {
            let (m, s) = (input.mean[c], input.std[c]);
            out.extend((0..plane).map(|i| (raw[i * 3 + c] as f32 / 255.0 - m) / s));
        }
    }
    Ok(out)
}

fn resize(image: &DynamicImage, input: &ImageInput) -> DynamicImage {
    let (tw, th) = (input.width, input.height);
    let (w, h) = image.dimensions();
    if (w, h) == (tw, th) {
        return image.clone();
    }
    let filter = FilterType::Triangle;
    match input.resize {
        Resize::Stretch => image.resize_exact(tw, th, filter),
        Resize::Fit => {
            let inner = image.resize(tw, th, filter);
            let mut canvas = DynamicImage::new(tw, th, inner.color());
            let (iw, ih) = inner.dimensions();
            image::imageops::overlay(
                &mut canvas,
                &inner,
                ((tw - iw) / 2) as i64,
                ((th - ih) / 2) as i64,
            );
            canvas
        }
        Resize::Crop => image.resize_to_fill(tw, th, filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage};

    fn rgb_input(width: u32, height: u32, resize: Resize) -> ImageInput {
        ImageInput {
            width,
            height,
            channels: 3,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            resize,
        }
    }

    fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image.write_to(&mut bytes, format).unwrap();
        bytes.into_inner()
    }

    #[test]
    fn regions_are_normalised_and_checked() {
        let r = Region {
            top_left: Point { x: 30, y: 5 },
            bottom_right: Point { x: 10, y: 25 },
        };
        assert_eq!(
            r.within(40, 40).unwrap(),
            Rect {
                x: 10,
                y: 5,
                width: 20,
                height: 20
            }
        );
        assert!(r.within(20, 40).unwrap_err().contains("does not fit"));
        let flat = Region {
            top_left: Point { x: 3, y: 3 },
            bottom_right: Point { x: 9, y: 3 },
        };
        assert!(flat.within(40, 40).unwrap_err().contains("no area"));
    }

    #[test]
    fn the_region_is_what_the_model_sees() {
        // Left half red, right half blue; a region on the right sees blue.
        let img = RgbImage::from_fn(20, 10, |x, _| {
            if x < 10 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let img = DynamicImage::ImageRgb8(img);
        let region = Region {
            top_left: Point { x: 12, y: 1 },
            bottom_right: Point { x: 18, y: 9 },
        };
        let out = encode(&img, Some(&region), &rgb_input(4, 4, Resize::Stretch)).unwrap();
        assert_eq!(out.len(), 48);
        assert!(out[..16].iter().all(|&v| v == 0.0), "red plane: {out:?}");
        assert!(out[32..].iter().all(|&v| v == 1.0), "blue plane: {out:?}");
    }

    #[test]
    fn fit_pads_and_crop_fills() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 10, Rgb([255, 255, 255])));
        let fit = encode(&img, None, &rgb_input(8, 8, Resize::Fit)).unwrap();
        // Scaled to 8×2 in the middle rows; the rest is black padding.
        assert_eq!(fit[0], 0.0);
        assert!(fit[3 * 8 + 4] > 0.9);
        let crop = encode(&img, None, &rgb_input(8, 8, Resize::Crop)).unwrap();
        assert!(crop.iter().all(|&v| v > 0.9));
    }

    #[test]
    fn normalisation_and_grayscale() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(2, 2, Rgb([255, 255, 255])));
        let input = ImageInput {
            width: 2,
            height: 2,
            channels: 1,
            mean: vec![0.5],
            std: vec![0.25],
            resize: Resize::Stretch,
        };
        let out = encode(&img, None, &input).unwrap();
        assert_eq!(out, vec![2.0; 4]);
    }

    #[test]
    fn every_format_and_pixel_layout_decodes() {
        let rgba = image::RgbaImage::from_pixel(6, 4, image::Rgba([10, 200, 30, 0]));
        let gray16 =
            image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(6, 4, image::Luma([65535]));
        let cases = [
            (DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Png),
            (DynamicImage::ImageLuma16(gray16), ImageFormat::Png),
            (
                DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba.clone()).to_rgb8()),
                ImageFormat::Jpeg,
            ),
            (DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Bmp),
            (DynamicImage::ImageRgba8(rgba.clone()), ImageFormat::Gif),
            (DynamicImage::ImageRgba8(rgba), ImageFormat::WebP),
        ];
        for (img, format) in cases {
            let bytes = encoded(&img, format);
            let decoded = decode_bytes(&bytes).unwrap_or_else(|e| panic!("{format:?}: {e:?}"));
            assert_eq!(decoded.dimensions(), (6, 4), "{format:?}");
            let out = encode(&decoded, None, &rgb_input(3, 2, Resize::Stretch)).unwrap();
            assert_eq!(out.len(), 18, "{format:?}");
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)), "{format:?}");
        }
    }

    #[test]
    fn corrupt_and_huge_images_fail_with_a_code() {
        let bytes = encoded(
            &DynamicImage::ImageRgb8(RgbImage::new(8, 8)),
            ImageFormat::Png,
        );
        let cut = &bytes[..bytes.len() / 2];
        assert_eq!(decode_bytes(cut).unwrap_err().code, "invalid_image");
        assert_eq!(
            decode_bytes(b"hello, world").unwrap_err().code,
            "invalid_image"
        );
        assert_eq!(decode_bytes(b"").unwrap_err().code, "empty_file");
        // A PNG header claiming 100k × 100k pixels: refused before decoding.
        let mut bomb = bytes.clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_bytes(&bomb).unwrap_err();
        assert_eq!(err.code, "image_too_large", "{err:?}");
    }

    #[test]
    fn a_long_thin_image_is_refused_before_resizing() {
        let thin = DynamicImage::ImageRgb8(RgbImage::new(1_000_000, 1));
        // Stretched or cropped to a square, it would be 224 M pixels on the
        // way; fitted inside, it stays a line, which is cheap.
        for resize in [Resize::Stretch, Resize::Crop] {
            let code = encode(&thin, None, &rgb_input(224, 224, resize))
                .err()
                .map(|e| e.code);
            assert_eq!(code, Some("image_too_large"), "{resize:?}");
        }
        assert!(encode(&thin, None, &rgb_input(224, 224, Resize::Fit)).is_ok());
        // An ordinary photo is fine.
        let photo = DynamicImage::ImageRgb8(RgbImage::new(600, 400));
        encode(&photo, None, &rgb_input(224, 224, Resize::Crop)).unwrap();
    }

    /// PNG's chunk checksum, so the doctored header above is well formed.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
