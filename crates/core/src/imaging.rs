//! Image bytes with their format and size, and the geometry the loop needs:
//! header-only probing, resizing for editors and thinkers, padding.
//!
//! Every decode in the process goes through [`Image::decode`] or the
//! conversions below, which read the decoded size from the header first and
//! hold a share of the process-wide [`DecodeBudget`] while the pixels live:
//! a small file may declare a huge image (RLE BMP, flat PNG, GIF, WebP), so
//! neither its encoded size nor its pixel count bounds the memory it costs.

use std::io::Cursor;
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use image::{DynamicImage, GenericImageView, ImageDecoder, ImageReader};
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
    /// Declared decoded size (width × height × channels × bytes per channel)
    /// over the byte limit that goes with the pixel limit.
    #[error(
        "the image decodes to {bytes} bytes, over the limit of {limit} bytes \
         (the pixel limit at 4 bytes per pixel; 16-bit images count 6 or 8)"
    )]
    TooManyBytes {
        /// Decoded size the header declares.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A large decoded size declared by a file far too small to carry it.
    #[error(
        "the image decodes to {bytes} bytes from {encoded} encoded bytes, more than \
         {ratio} decoded bytes per encoded byte (allowed only up to {free} decoded bytes)",
        ratio = MAX_INFLATION,
        free = INFLATION_FREE_BYTES
    )]
    TooCompressed {
        /// Decoded size the header declares.
        bytes: u64,
        /// Size of the encoded file.
        encoded: u64,
    },
    /// Decoding needs more memory than this process's whole decode budget.
    #[error(
        "decoding the image needs {bytes} bytes, more than this process's whole \
         decode memory budget of {budget} bytes"
    )]
    OverMemoryBudget {
        /// Decoded size the header declares.
        bytes: u64,
        /// The process's budget.
        budget: u64,
    },
}

/// Bytes per pixel the pixel limit allows: [`Image::probe`] refuses an image
/// whose decoded size is over `max_pixels × 4`, the size of 8-bit RGBA at the
/// pixel limit (160 MB at the default 40 Mpx). 8-bit images at the pixel
/// limit all fit; 16-bit RGB (6 bytes per pixel) and RGBA (8) fit only up
/// to 2/3 and 1/2 of it, since they cost that much more memory to decode.
pub const BYTES_PER_PIXEL_ALLOWED: u64 = 4;

/// Decoded size up to which any compression ratio is accepted (64 MiB).
pub const INFLATION_FREE_BYTES: u64 = 64 << 20;

/// Most decoded bytes per encoded byte above [`INFLATION_FREE_BYTES`].
/// Deflate cannot exceed about 1032:1 and JPEG stays near or under 1000:1,
/// so no PNG or JPEG comes near; an RLE BMP of 1 KB can declare 120 MB,
/// and a flat GIF or WebP of a few hundred bytes as much. Those are refused
/// once they are this large, since a legitimate large image carries detail.
pub const MAX_INFLATION: u64 = 2048;

/// Default for the process-wide decode memory budget: 1 GiB, room for the
/// costliest conversion of an image at the default limits (about 990 MB to
/// resize 6000×6600 8-bit RGB to multiples of 16, most of it the resize's
/// f32 buffer) or for several ordinary decodes at once.
pub const DEFAULT_DECODE_MEMORY_BUDGET: u64 = 1 << 30;

/// A memory budget, in bytes, shared by image decodes: each acquires its
/// estimated bytes from the header before any pixel buffer is allocated.
/// [`Image::decode`] holds its share while decoding (the caller then owns
/// the pixels); the conversions ([`Image::to_png`], [`Image::resized_to`],
/// [`Image::to_png_multiple_of`], [`Image::for_vision_model`]) hold theirs,
/// sized for their working buffers too, until they are done. A decode
/// needing more than the whole budget is refused; others wait, first come
/// first served so a large one is not starved by a stream of small ones,
/// blocking their thread (decodes run on blocking threads, see
/// [`off_thread`]).
#[derive(Debug)]
pub struct DecodeBudget {
    state: Mutex<BudgetState>,
    changed: Condvar,
}

#[derive(Debug)]
struct BudgetState {
    capacity: u64,
    in_use: u64,
    /// The ticket the next acquirer gets.
    next_ticket: u64,
    /// The ticket whose turn it is.
    serving: u64,
}

/// A share of a [`DecodeBudget`], given back on drop.
#[derive(Debug)]
#[must_use = "the share is given back as soon as the permit is dropped"]
pub struct DecodePermit<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl DecodeBudget {
    /// A budget of `capacity` bytes.
    pub const fn new(capacity: u64) -> Self {
        Self {
            state: Mutex::new(BudgetState {
                capacity,
                in_use: 0,
                next_ticket: 0,
                serving: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        // Every update is a few counters changed under the lock without
        // anything that can panic in between: a poisoned lock holds
        // consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the capacity. Shares already held stay held; waiters are
    /// re-checked against the new capacity.
    pub fn set_capacity(&self, bytes: u64) {
        self.lock().capacity = bytes;
        self.changed.notify_all();
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.lock().capacity
    }

    /// Bytes held by permits now.
    pub fn in_use(&self) -> u64 {
        self.lock().in_use
    }

    /// Decodes waiting for room now.
    pub fn waiting(&self) -> u64 {
        let state = self.lock();
        state.next_ticket - state.serving
    }

    /// Waits until `bytes` are free and takes them; refuses at once, with
    /// [`ImageError::OverMemoryBudget`], when `bytes` exceed the capacity.
    pub fn acquire(&self, bytes: u64) -> Result<DecodePermit<'_>, ImageError> {
        self.acquire_for_work(bytes, bytes)
    }

    /// Like [`Self::acquire`] for `decoded` bytes of pixels that need
    /// `working` bytes in all while they are converted (resize buffers,
    /// copies). Only `decoded` over the capacity is refused: a larger
    /// working set takes the whole budget and so runs alone, since an image
    /// that may be decoded must also be convertible.
    pub fn acquire_for_work(
        &self,
        decoded: u64,
        working: u64,
    ) -> Result<DecodePermit<'_>, ImageError> {
        let over = |capacity| ImageError::OverMemoryBudget {
            bytes: decoded,
            budget: capacity,
        };
        let mut state = self.lock();
        if decoded > state.capacity {
            return Err(over(state.capacity));
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        loop {
            if ticket == state.serving {
                let take = working.max(decoded).min(state.capacity);
                // The capacity may have shrunk while this one waited.
                let outcome = if decoded > state.capacity {
                    Err(over(state.capacity))
                } else if state.in_use.saturating_add(take) <= state.capacity {
                    state.in_use += take;
                    Ok(DecodePermit {
                        budget: self,
                        bytes: take,
                    })
                } else {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                    continue;
                };
                state.serving += 1;
                drop(state);
                // The next in line may fit in what is left.
                self.changed.notify_all();
                return outcome;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl DecodePermit<'_> {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for DecodePermit<'_> {
    fn drop(&mut self) {
        self.budget.lock().in_use -= self.bytes;
        self.budget.changed.notify_all();
    }
}

static PROCESS_BUDGET: DecodeBudget = DecodeBudget::new(DEFAULT_DECODE_MEMORY_BUDGET);

/// The process-wide budget every decode in this process goes through.
pub fn decode_budget() -> &'static DecodeBudget {
    &PROCESS_BUDGET
}

/// Sets the process-wide decode memory budget, in bytes (default
/// [`DEFAULT_DECODE_MEMORY_BUDGET`], 1 GiB). Call it once at start-up from
/// configuration; a decode needing more than this is refused with
/// [`ImageError::OverMemoryBudget`], and concurrent decodes wait so that
/// together they stay within it.
pub fn set_decode_memory_budget(bytes: u64) {
    PROCESS_BUDGET.set_capacity(bytes);
}

/// Bytes the Lanczos resize of a `src_w`-wide image to `dst_w`×`dst_h`
/// needs besides its source: the vertical pass's RGBA f32 buffer
/// (`src_w`×`dst_h`, 16 bytes a pixel) and the output at `bpp`.
fn resize_bytes(src_w: u32, dst_w: u32, dst_h: u32, bpp: u64) -> u64 {
    let px = |w: u32, h: u32| u64::from(w) * u64::from(h);
    px(src_w, dst_h) * 16 + px(dst_w, dst_h) * bpp
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
    /// Reads format, size and decoded size from the header only (nothing is
    /// decoded), and refuses, before any pixel buffer is allocated, images
    /// over `max_pixels`, over `max_pixels ×` [`BYTES_PER_PIXEL_ALLOWED`]
    /// decoded bytes, or declaring more than [`INFLATION_FREE_BYTES`] from
    /// a file over [`MAX_INFLATION`] times smaller.
    pub fn probe(bytes: Bytes, max_pixels: u64) -> Result<Self, ImageError> {
        let reader = ImageReader::new(Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| ImageError::Undecodable(e.to_string()))?;
        let format = reader
            .format()
            .and_then(ImageFormat::from_image_crate)
            .ok_or(ImageError::UnknownFormat)?;
        let decoder = reader.into_decoder().map_err(undecodable)?;
        let (width, height) = decoder.dimensions();
        let decoded = decoder.total_bytes();
        drop(decoder);
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
        let limit = max_pixels.saturating_mul(BYTES_PER_PIXEL_ALLOWED);
        if decoded > limit {
            return Err(ImageError::TooManyBytes {
                bytes: decoded,
                limit,
            });
        }
        let encoded = bytes.len() as u64;
        if decoded > INFLATION_FREE_BYTES && decoded > encoded.saturating_mul(MAX_INFLATION) {
            return Err(ImageError::TooCompressed {
                bytes: decoded,
                encoded,
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

    /// Decodes the pixels, within the process-wide [`decode_budget`]: the
    /// decoded size is read from the header, that many bytes are acquired
    /// (waiting for room, or refused when over the whole budget) and given
    /// back once decoding is done.
    pub fn decode(&self) -> Result<DynamicImage, ImageError> {
        self.decode_within(decode_budget())
    }

    /// [`Self::decode`] within `budget` instead of the process's.
    pub fn decode_within(&self, budget: &DecodeBudget) -> Result<DynamicImage, ImageError> {
        self.with_pixels(budget, |_, _| 0, Ok)
    }

    /// Decodes and runs `work` on the pixels while holding a share of
    /// `budget` sized for the decoded pixels plus `extra(decoded bytes,
    /// bytes per pixel)`, the working memory `work` needs; the share is
    /// given back when `work` is done. The one place pixels are decoded.
    fn with_pixels<T>(
        &self,
        budget: &DecodeBudget,
        extra: impl FnOnce(u64, u64) -> u64,
        work: impl FnOnce(DynamicImage) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let mut reader = ImageReader::new(Cursor::new(&self.bytes[..]));
        reader.set_format(match self.format {
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
            ImageFormat::Webp => image::ImageFormat::WebP,
            ImageFormat::Gif => image::ImageFormat::Gif,
            ImageFormat::Bmp => image::ImageFormat::Bmp,
        });
        let decoder = reader.into_decoder().map_err(undecodable)?;
        let decoded = decoder.total_bytes();
        let bpp = u64::from(decoder.color_type().bytes_per_pixel());
        let working = decoded.saturating_add(extra(decoded, bpp));
        let _permit = budget.acquire_for_work(decoded, working)?;
        let pixels = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
        work(pixels)
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
        // The encoder's output, at worst as large as the pixels.
        self.with_pixels(
            decode_budget(),
            |decoded, _| decoded,
            |p| Ok(Self::from_pixels(&p)),
        )
    }

    /// PNG resized down so both sides are multiples of `multiple` (for editors
    /// that need it); unchanged when they already are.
    pub fn to_png_multiple_of(&self, multiple: u32) -> Result<Self, ImageError> {
        let (w, h) = multiple_of(self.width, self.height, multiple);
        if (w, h) == (self.width, self.height) {
            return self.to_png();
        }
        self.resized_png(w, h)
    }

    /// PNG of the pixels resized to `w`×`h`, budgeted for the resize and
    /// the encoded output.
    fn resized_png(&self, w: u32, h: u32) -> Result<Self, ImageError> {
        let src_w = self.width;
        self.with_pixels(
            decode_budget(),
            |_, bpp| resize_bytes(src_w, w, h, bpp) + u64::from(w) * u64::from(h) * bpp,
            |p| {
                let resized = p.resize_exact(w, h, image::imageops::FilterType::Lanczos3);
                drop(p);
                Ok(Self::from_pixels(&resized))
            },
        )
    }

    /// Brings an editor output back to `width`×`height` (PNG) when it differs.
    pub fn resized_to(&self, width: u32, height: u32) -> Result<Self, ImageError> {
        if (self.width, self.height) == (width, height) {
            return Ok(self.clone());
        }
        self.resized_png(width, height)
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
        let (src_w, src_h) = (self.width, self.height);
        let px = |a: u32, b: u32| u64::from(a) * u64::from(b);
        let extra = move |_, bpp| {
            let resize = if (w, h) == (src_w, src_h) {
                0
            } else {
                resize_bytes(src_w, w, h, bpp)
            };
            // The RGBA copy and canvas when padding, then the encoded output.
            let pad = if (pw, ph) == (w, h) {
                0
            } else {
                px(w, h) * 4 + px(pw, ph) * 4
            };
            resize + pad + px(pw, ph) * 4
        };
        self.with_pixels(decode_budget(), extra, |mut pixels| {
            if (w, h) != (src_w, src_h) {
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
        })
    }
}

fn undecodable(e: image::ImageError) -> ImageError {
    ImageError::Undecodable(e.to_string())
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
        let bytes = png_header_only(100_000, 100_000, 8, 2);
        assert!(bytes.len() < 100);
        let err = Image::probe(bytes, 40_000_000).unwrap_err();
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

    /// A BMP with BI_RLE8 compression: a two-colour palette, a run of four
    /// pixels of colour 1 on the bottom row, end of line, end of bitmap.
    /// The rest of the image is left to the decoder, so the file stays at
    /// 68 bytes whatever size it declares.
    fn rle8_bmp(width: i32, height: i32) -> Bytes {
        let palette = [[0u8, 0, 0, 0], [0x30, 0x20, 0x10, 0]];
        let rle = [4u8, 1, 0, 0, 0, 1];
        let offset = 14 + 40 + 4 * palette.len() as u32;
        let mut b = b"BM".to_vec();
        b.extend((offset + rle.len() as u32).to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b.extend(40u32.to_le_bytes());
        b.extend(width.to_le_bytes());
        b.extend(height.to_le_bytes());
        b.extend(1u16.to_le_bytes()); // planes
        b.extend(8u16.to_le_bytes()); // bits per pixel
        b.extend(1u32.to_le_bytes()); // BI_RLE8
        b.extend((rle.len() as u32).to_le_bytes());
        b.extend(2835i32.to_le_bytes());
        b.extend(2835i32.to_le_bytes());
        b.extend((palette.len() as u32).to_le_bytes());
        b.extend(0u32.to_le_bytes());
        for colour in palette {
            b.extend(colour);
        }
        b.extend(rle);
        Bytes::from(b)
    }

    /// A PNG of `colour_type` and `depth` declaring `w`×`h`, with an empty
    /// zlib stream for data: a tiny file that would fail to decode.
    fn png_header_only(w: u32, h: u32, depth: u8, colour_type: u8) -> Bytes {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([depth, colour_type, 0, 0, 0]);
        bytes.extend(13u32.to_be_bytes());
        bytes.extend(&ihdr);
        bytes.extend(crc32(&ihdr).to_be_bytes());
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
        Bytes::from(bytes)
    }

    #[test]
    fn the_crafted_rle8_bmp_is_a_real_image() {
        let small = Image::validate(rle8_bmp(16, 8), 1 << 20).unwrap();
        assert_eq!(
            (small.format, small.width, small.height),
            (ImageFormat::Bmp, 16, 8)
        );
        let pixels = small.decode().unwrap().to_rgb8();
        // Bottom-up: the first row in the file is the last one.
        assert_eq!(pixels.get_pixel(0, 7).0, [0x10, 0x20, 0x30]);
    }

    #[test]
    fn a_tiny_rle8_bmp_declaring_6000x6600_is_refused_before_decoding() {
        let bomb = rle8_bmp(6000, 6600);
        assert!(bomb.len() < 100);
        // 39.6 Mpx is under the default pixel limit and its 118.8 MB of RGB
        // under the byte limit; the ratio to its 68 bytes is not.
        let err = Image::probe(bomb, 40_000_000).unwrap_err();
        assert_eq!(
            err,
            ImageError::TooCompressed {
                bytes: 6000 * 6600 * 3,
                encoded: 68
            }
        );
    }

    #[test]
    fn a_16_bit_rgba_png_over_the_byte_limit_is_refused_before_decoding() {
        // 25 Mpx, under 40 Mpx; at 8 bytes a pixel 200 MB, over 160 MB.
        let png16 = png_header_only(5000, 5000, 16, 6);
        let err = Image::probe(png16, 40_000_000).unwrap_err();
        assert_eq!(
            err,
            ImageError::TooManyBytes {
                bytes: 200_000_000,
                limit: 160_000_000
            }
        );
        assert!(err.to_string().contains("160000000"), "{err}");
        // The same pixels at 8 bits pass the byte limit (and then fail
        // only for carrying no data).
        let png8 = png_header_only(5000, 5000, 8, 6);
        assert!(matches!(
            Image::probe(png8, 40_000_000),
            Err(ImageError::TooCompressed {
                bytes: 100_000_000,
                ..
            })
        ));
    }

    #[test]
    fn highly_compressed_images_under_64_mib_pass() {
        // 12 MB of pixels from 68 bytes: any ratio is fine this small.
        let flat = Image::validate(rle8_bmp(2000, 2000), 40_000_000).unwrap();
        assert_eq!((flat.width, flat.height), (2000, 2000));
        let png = flat.to_png().unwrap();
        assert_eq!((png.format, png.width), (ImageFormat::Png, 2000));
    }

    #[test]
    fn the_budget_blocks_a_decode_while_another_holds_it() {
        let img = png(64, 64);
        let decoded = 64 * 64 * 3;
        let budget = DecodeBudget::new(decoded);
        let held = budget.acquire(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(img.decode_within(&budget)).unwrap());
            // Wait until the decode is parked on the budget.
            while budget.waiting() == 0 {
                std::thread::yield_now();
            }
            assert!(rx.try_recv().is_err(), "decoded while the budget was held");
            assert_eq!(budget.in_use(), 1);
            drop(held);
            let pixels = rx.recv().unwrap().unwrap();
            assert_eq!(pixels.dimensions(), (64, 64));
        });
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn waiters_are_served_in_order_so_a_large_one_is_not_starved() {
        let budget = &DecodeBudget::new(100);
        let held = budget.acquire(60).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let until_waiting = |n| {
                while budget.waiting() < n {
                    std::thread::yield_now();
                }
            };
            let large = tx.clone();
            scope.spawn(move || {
                let permit = budget.acquire(100).unwrap();
                large.send(("large", permit.bytes())).unwrap();
            });
            until_waiting(1);
            // 10 bytes would fit beside the 60 held, but the large one
            // came first.
            let small = tx.clone();
            scope.spawn(move || {
                let permit = budget.acquire(10).unwrap();
                small.send(("small", permit.bytes())).unwrap();
            });
            until_waiting(2);
            assert!(rx.try_recv().is_err());
            drop(held);
            assert_eq!(rx.recv().unwrap(), ("large", 100));
            assert_eq!(rx.recv().unwrap(), ("small", 10));
        });
        assert_eq!((budget.in_use(), budget.waiting()), (0, 0));
    }

    #[test]
    fn a_decode_over_the_whole_budget_is_refused() {
        let img = png(64, 64);
        let budget = DecodeBudget::new(1000);
        assert_eq!(
            img.decode_within(&budget).unwrap_err(),
            ImageError::OverMemoryBudget {
                bytes: 64 * 64 * 3,
                budget: 1000
            }
        );
        assert!(budget.acquire(1001).is_err());
        assert_eq!(budget.in_use(), 0);
        // A working set over the budget is capped at it: it runs alone.
        let permit = budget.acquire_for_work(500, 5000).unwrap();
        assert_eq!(permit.bytes(), 1000);
        drop(permit);
        // Shrinking the budget refuses what no longer fits.
        budget.set_capacity(10);
        assert!(budget.acquire(11).is_err());
        assert_eq!(budget.acquire(10).unwrap().bytes(), 10);
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
