//! Image preparation for the in-process Qwen3-VL thinker.
//!
//! mistral.rs's Qwen-VL preprocessor panics on images with a side below the
//! model's minimum (32 px for Qwen3-VL: patch 16 × merge 2) or an aspect
//! ratio above 200, so images are scaled and padded here before they reach
//! the engine (docs/architecture.md §2).

use editthinker_core::imaging::{fit_within, padded_size};
use image::{DynamicImage, GenericImageView as _, RgbImage};

/// Smallest image side Qwen3-VL accepts (patch 16 × merge 2).
pub const MIN_SIDE: u32 = 32;

/// Largest aspect ratio we hand to the engine. The preprocessor's limit is
/// 200; we stay well below it, since its resizing rounds each side to a
/// multiple of 32 and can stretch the ratio. (The engine also scales images
/// above the model's `max_pixels` down, which leaves a shorter side of
/// about `sqrt(max_pixels / aspect)`: ample for Qwen3-VL's 16.7 MP, but a
/// model directory with a tiny `max_pixels` needs a matching
/// `max_image_edge`.)
pub const MAX_ASPECT: f64 = 100.0;

/// Where an image of `width`×`height` ends up: scaled to (`scaled_w`,
/// `scaled_h`) so its longer side is at most `max_edge`, then centred on a
/// black canvas of (`canvas_w`, `canvas_h`) whose shorter side is at least
/// [`MIN_SIDE`] and whose aspect ratio is at most [`MAX_ASPECT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Width after scaling.
    pub scaled_w: u32,
    /// Height after scaling.
    pub scaled_h: u32,
    /// Canvas width (≥ `scaled_w`).
    pub canvas_w: u32,
    /// Canvas height (≥ `scaled_h`).
    pub canvas_h: u32,
}

/// Computes the [`Placement`] of a `width`×`height` image for a longest
/// side of `max_edge` (itself at least [`MIN_SIDE`]).
pub fn placement(width: u32, height: u32, max_edge: u32) -> Placement {
    let max_edge = max_edge.max(MIN_SIDE);
    let (scaled_w, scaled_h) = fit_within(width.max(1), height.max(1), max_edge);
    let (canvas_w, canvas_h) = padded_size(scaled_w, scaled_h, MIN_SIDE, MAX_ASPECT);
    Placement {
        scaled_w,
        scaled_h,
        canvas_w,
        canvas_h,
    }
}

/// The image as RGB, scaled down so its longer side is at most `max_edge`,
/// and padded with black (centred) so that no side is under [`MIN_SIDE`]
/// and the aspect ratio is at most [`MAX_ASPECT`]. Pure: the same input
/// always gives the same pixels.
pub fn prepare_for_qwen_vl(image: &DynamicImage, max_edge: u32) -> DynamicImage {
    let (width, height) = image.dimensions();
    let p = placement(width, height, max_edge);
    let scaled = if (p.scaled_w, p.scaled_h) == (width, height) {
        image.to_rgb8()
    } else {
        image
            .resize_exact(
                p.scaled_w,
                p.scaled_h,
                image::imageops::FilterType::Triangle,
            )
            .to_rgb8()
    };
    if (p.canvas_w, p.canvas_h) == (p.scaled_w, p.scaled_h) {
        return DynamicImage::ImageRgb8(scaled);
    }
    let mut canvas = RgbImage::new(p.canvas_w, p.canvas_h);
    image::imageops::replace(
        &mut canvas,
        &scaled,
        i64::from((p.canvas_w - p.scaled_w) / 2),
        i64::from((p.canvas_h - p.scaled_h) / 2),
    );
    DynamicImage::ImageRgb8(canvas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn solid(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb([200, 100, 50])))
    }

    fn ok_for_engine(img: &DynamicImage) {
        let (w, h) = img.dimensions();
        assert!(w >= MIN_SIDE && h >= MIN_SIDE, "{w}x{h}");
        let ratio = f64::from(w.max(h)) / f64::from(w.min(h));
        assert!(ratio <= MAX_ASPECT, "{w}x{h}");
    }

    #[test]
    fn ordinary_images_are_left_alone() {
        let img = solid(256, 192);
        let out = prepare_for_qwen_vl(&img, 1024);
        assert_eq!(out.dimensions(), (256, 192));
        assert_eq!(out.to_rgb8(), img.to_rgb8());
    }

    #[test]
    fn large_images_are_scaled_to_max_edge() {
        let out = prepare_for_qwen_vl(&solid(4000, 3000), 1024);
        assert_eq!(out.dimensions(), (1024, 768));
        let out = prepare_for_qwen_vl(&solid(3000, 4000), 512);
        assert_eq!(out.dimensions(), (384, 512));
    }

    #[test]
    fn tiny_images_are_padded_to_the_minimum_side() {
        let out = prepare_for_qwen_vl(&solid(8, 8), 1024);
        assert_eq!(out.dimensions(), (32, 32));
        ok_for_engine(&out);
        // The original pixels sit in the centre, the padding is black.
        let rgb = out.to_rgb8();
        assert_eq!(rgb.get_pixel(16, 16), &Rgb([200, 100, 50]));
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([0, 0, 0]));
        assert_eq!(
            prepare_for_qwen_vl(&solid(1, 1), 1024).dimensions(),
            (32, 32)
        );
        assert_eq!(
            prepare_for_qwen_vl(&solid(20, 100), 1024).dimensions(),
            (32, 100)
        );
    }

    #[test]
    fn extreme_aspect_ratios_are_padded() {
        for (w, h) in [(2000, 8), (8, 2000), (10_000, 40), (640, 2), (3, 700)] {
            let out = prepare_for_qwen_vl(&solid(w, h), 1024);
            ok_for_engine(&out);
            assert!(out.width().max(out.height()) <= 1024, "{w}x{h}");
        }
        assert_eq!(
            placement(2000, 8, 1024),
            Placement {
                scaled_w: 1024,
                scaled_h: 4,
                canvas_w: 1024,
                canvas_h: 32,
            }
        );
        // 4000x20 fits (200:1) but is padded below our 100:1 margin.
        let p = placement(4000, 20, 4000);
        assert_eq!((p.canvas_w, p.canvas_h), (4000, 40));
    }

    #[test]
    fn alpha_and_grey_images_become_rgb() {
        let rgba = DynamicImage::new_rgba8(40, 40);
        assert!(matches!(
            prepare_for_qwen_vl(&rgba, 1024),
            DynamicImage::ImageRgb8(_)
        ));
        let grey = DynamicImage::new_luma8(4, 4);
        assert!(matches!(
            prepare_for_qwen_vl(&grey, 1024),
            DynamicImage::ImageRgb8(_)
        ));
    }
}
