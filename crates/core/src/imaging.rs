//! Image bytes with their format and size, and the geometry the loop needs:
//! header-only probing, resizing for editors and thinkers, padding.

use std::io::Cursor;

use bytes::Bytes;
use image::{DynamicImage, GenericImageView, ImageReader};
use serde::{Deserialize, Serialize};

/// Encoded image formats we accept and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP.
    Webp,
    /// GIF (first frame).
    Gif,
    /// BMP.
    Bmp,
}

impl ImageFormat {
    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
            Self::Bmp => "image/bmp",
        }
    }

    /// A file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Bmp => "bmp",
        }
    }

    /// Parses a MIME type.
    pub fn from_mime(mime: &str) -> Option<Self> {
        Some(match mime {
            "image/png" => Self::Png,
            "image/jpeg" | "image/jpg" => Self::Jpeg,
            "image/webp" => Self::Webp,
            "image/gif" => Self::Gif,
            "image/bmp" => Self::Bmp,
            _ => return None,
        })
    }

    fn from_image_crate(f: image::ImageFormat) -> Option<Self> {
        Some(match f {
            image::ImageFormat::Png => Self::Png,
            image::ImageFormat::Jpeg => Self::Jpeg,
            image::ImageFormat::WebP => Self::Webp,
            image::ImageFormat::Gif => Self::Gif,
            image::ImageFormat::Bmp => Self::Bmp,
            _ => return None,
        })
    }
}

/// Why bytes are not a usable image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Not a format we recognise.
    #[error("not an image in a supported format (png, jpeg, webp, gif, bmp)")]
    UnknownFormat,
    /// Header or data could not be decoded.
    #[error("the image could not be decoded: {0}")]
    Undecodable(String),
    /// Declared size over the pixel limit.
    #[error("the image is {width}x{height} = {pixels} pixels, over the limit of {limit}")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The limit.
        limit: u64,
    },
    /// Zero width or height.
    #[error("the image has no pixels")]
    Empty,
}

/// Encoded image bytes with their format and dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Encoded bytes.
    pub bytes: Bytes,
    /// Their format.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Image {
    /// Reads format and size from the header only (nothing is decoded), and
    /// refuses images over `max_pixels` before any pixel buffer is allocated.
    pub fn probe(bytes: Bytes, max_pixels: u64) -> Result<Self, ImageError> {
        let reader = ImageReader::new(Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        let format = reader
            .format()
            .and_then(ImageFormat::from_image_crate)
            .ok_or(ImageError::UnknownFormat)?;
        let (width, height) = reader
            .into_dimensions()
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        if width == 0 || height == 0 {
            return Err(ImageError::Empty);
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > max_pixels {
            return Err(ImageError::TooManyPixels {
                width,
                height,
                pixels,
                limit: max_pixels,
            });
        }
        Ok(Self {
            bytes,
            format,
            width,
            height,
        })
    }

    /// Probes and then fully decodes, so truncated or corrupt data is caught.
    pub fn validate(bytes: Bytes, max_pixels: u64) -> Result<Self, ImageError> {
        let image = Self::probe(bytes, max_pixels)?;
        image.decode()?;
        Ok(image)
    }

    /// Decodes the pixels.
    pub fn decode(&self) -> Result<DynamicImage, ImageError> {
        let mut reader = ImageReader::new(Cursor::new(&self.bytes[..]));
        reader.set_format(match self.format {
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
        });
        reader
            .decode()
            .map_err(|e| ImageError::Undecodable(e.to_string()))
    }

    /// Encodes pixels as PNG.
    pub fn from_pixels(pixels: &DynamicImage) -> Self {
        let mut out = Vec::new();
        pixels
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("PNG encoding into memory does not fail");
        let (width, height) = pixels.dimensions();
        Self {
            bytes: Bytes::from(out),
            format: ImageFormat::Png,
            width,
            height,
        }
    }

    /// This image as PNG (re-encoded only when it is not PNG already).
    pub fn to_png(&self) -> Result<Self, ImageError> {
        if self.format == ImageFormat::Png {
            return Ok(self.clone());
        }
        Ok(Self::from_pixels(&self.decode()?))
    }

    /// PNG resized down so both sides are multiples of `multiple` (for editors
    /// that need it); unchanged when they already are.
    pub fn to_png_multiple_of(&self, multiple: u32) -> Result<Self, ImageError> {
        let (w, h) = multiple_of(self.width, self.height, multiple);
        if (w, h) == (self.width, self.height) {
            return self.to_png();
        }
        let pixels = self
            .decode()?
            .resize_exact(w, h, image::imageops::FilterType::Lanczos3);
        Ok(Self::from_pixels(&pixels))
    }

    /// Brings an editor output back to `width`×`height` (PNG) when it differs.
    pub fn resized_to(&self, width: u32, height: u32) -> Result<Self, ImageError> {
        if (self.width, self.height) == (width, height) {
            return Ok(self.clone());
        }
        let pixels =
            self.decode()?
                .resize_exact(width, height, image::imageops::FilterType::Lanczos3);
        Ok(Self::from_pixels(&pixels))
    }

    /// PNG for a vision model: scaled so the longer side is at most
    /// `max_edge`, then padded (edge colour: black) so the shorter side is at
    /// least `min_side` and the aspect ratio is at most `max_aspect`.
    pub fn for_vision_model(
        &self,
        max_edge: u32,
        min_side: u32,
        max_aspect: f64,
    ) -> Result<Self, ImageError> {
        let (w, h) = fit_within(self.width, self.height, max_edge);
        let (pw, ph) = padded_size(w, h, min_side, max_aspect);
        if (w, h) == (self.width, self.height) && (pw, ph) == (w, h) {
            return self.to_png();
        }
        let mut pixels = self.decode()?;
        if (w, h) != (self.width, self.height) {
            pixels = pixels.resize_exact(w, h, image::imageops::FilterType::Lanczos3);
        }
        if (pw, ph) != (w, h) {
            let mut canvas = image::RgbaImage::new(pw, ph);
            image::imageops::overlay(
                &mut canvas,
                &pixels.to_rgba8(),
                i64::from((pw - w) / 2),
                i64::from((ph - h) / 2),
            );
            pixels = DynamicImage::ImageRgba8(canvas);
        }
        Ok(Self::from_pixels(&pixels))
    }
}

/// The largest size not above (`w`, `h`) with both sides multiples of `m`
/// (never below `m`).
pub fn multiple_of(w: u32, h: u32, m: u32) -> (u32, u32) {
    let down = |v: u32| ((v / m) * m).max(m);
    (down(w), down(h))
}

/// Scales (`w`, `h`) down, keeping the aspect ratio, so the longer side is at
/// most `max_edge`.
pub fn fit_within(w: u32, h: u32, max_edge: u32) -> (u32, u32) {
    let longer = w.max(h);
    if longer <= max_edge {
        return (w, h);
    }
    let scale = f64::from(max_edge) / f64::from(longer);
    let s = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    (s(w), s(h))
}

/// The canvas size that pads (`w`, `h`) to a shorter side of at least
/// `min_side` and an aspect ratio of at most `max_aspect`.
pub fn padded_size(w: u32, h: u32, min_side: u32, max_aspect: f64) -> (u32, u32) {
    let (mut pw, mut ph) = (w.max(min_side), h.max(min_side));
    let longer = pw.max(ph);
    let needed_short = (f64::from(longer) / max_aspect).ceil() as u32;
    if pw < needed_short {
        pw = needed_short;
    }
    if ph < needed_short {
        ph = needed_short;
    }
    (pw, ph)
}

/// Runs CPU-heavy image work (decode, resize, encode) on a blocking thread,
/// so that it never stalls the async threads that serve streams and
/// heartbeats. A panic inside `work` is resumed in the caller.
pub async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("image work was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Image {
        Image::from_pixels(&DynamicImage::new_rgb8(w, h))
    }

    #[test]
    fn probe_reads_format_and_size() {
        let img = png(40, 30);
        let probed = Image::probe(img.bytes.clone(), 10_000).unwrap();
        assert_eq!(
            (probed.width, probed.height, probed.format),
            (40, 30, ImageFormat::Png)
        );
    }

    #[test]
    fn probe_refuses_huge_declared_sizes_without_decoding() {
        // A valid PNG header that declares 100000x100000 and carries no data.
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend(100_000u32.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]);
        bytes.extend(13u32.to_be_bytes());
        bytes.extend(&ihdr);
        bytes.extend(crc32(&ihdr).to_be_bytes());
        // A few bytes of (empty) zlib data and the end chunk: a tiny file.
        for (kind, data) in [
            (&b"IDAT"[..], &[0x78u8, 0x9c, 0x03, 0, 0, 0, 0, 1][..]),
            (b"IEND", &[]),
        ] {
            let mut chunk = kind.to_vec();
            chunk.extend(data);
            bytes.extend((data.len() as u32).to_be_bytes());
            bytes.extend(&chunk);
            bytes.extend(crc32(&chunk).to_be_bytes());
        }
        assert!(bytes.len() < 100);
        let err = Image::probe(Bytes::from(bytes), 40_000_000).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels {
                    pixels: 10_000_000_000,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        assert_eq!(
            Image::probe(Bytes::from_static(b"hello world"), 100).unwrap_err(),
            ImageError::UnknownFormat
        );
        let img = png(64, 64);
        let cut = img.bytes.slice(..img.bytes.len() - 20);
        assert!(matches!(
            Image::validate(cut, 1 << 20),
            Err(ImageError::Undecodable(_))
        ));
    }

    #[test]
    fn geometry_helpers() {
        assert_eq!(multiple_of(100, 37, 16), (96, 32));
        assert_eq!(multiple_of(10, 10, 16), (16, 16));
        assert_eq!(fit_within(2048, 1024, 1024), (1024, 512));
        assert_eq!(fit_within(500, 400, 1024), (500, 400));
        assert_eq!(padded_size(10, 20, 32, 200.0), (32, 32));
        assert_eq!(padded_size(1000, 2, 32, 200.0), (1000, 32));
        assert_eq!(padded_size(10000, 40, 32, 100.0), (10000, 100));
    }

    #[test]
    fn vision_and_editor_conversions() {
        let v = png(2000, 10).for_vision_model(1024, 32, 200.0).unwrap();
        assert_eq!((v.width, v.height), (1024, 32));
        let e = png(100, 37).to_png_multiple_of(16).unwrap();
        assert_eq!((e.width, e.height), (96, 32));
        let back = e.resized_to(100, 37).unwrap();
        assert_eq!((back.width, back.height), (100, 37));
        let decoded = back.decode().unwrap();
        assert_eq!(decoded.dimensions(), (100, 37));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
