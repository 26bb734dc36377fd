//! Images to and from the providers: the source as PNG or base64 (prepared
//! off the async threads), and base64 results decoded and validated.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::Bytes;
use editthinker_core::imaging::off_thread;
use editthinker_core::{EditorError, Image};

use super::MAX_OUTPUT_PIXELS;

/// The source as PNG, resized down to multiples of `multiple` (1 keeps the
/// source size): decoding, resizing and encoding run off the async threads.
pub async fn source_png(source: &Image, multiple: u32) -> Result<Image, EditorError> {
    let source = source.clone();
    off_thread(move || {
        source
            .to_png_multiple_of(multiple)
            .map_err(|e| EditorError::Invalid(format!("the source image cannot be prepared: {e}")))
    })
    .await
}

/// The source as base64 PNG at its own size, as a `data:image/png;base64,`
/// URL when `data_uri`, with its width and height (encoded off the async
/// threads).
pub async fn source_png_base64(
    source: &Image,
    data_uri: bool,
) -> Result<(String, u32, u32), EditorError> {
    let png = source_png(source, 1).await?;
    let (width, height) = (png.width, png.height);
    let encoded = off_thread(move || {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png.bytes);
        if data_uri {
            format!("data:image/png;base64,{b64}")
        } else {
            b64
        }
    })
    .await;
    Ok((encoded, width, height))
}

/// Tolerates missing padding; providers differ.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a base64 image (plain, or a `data:<mime>;base64,` URL; line
/// breaks allowed) and validates it. `what` names the field in errors.
/// Every failure is `Invalid`.
pub fn decode_base64_image(encoded: &str, what: &str) -> Result<Image, EditorError> {
    let payload = match encoded.strip_prefix("data:") {
        Some(rest) => rest
            .split_once(";base64,")
            .map(|(_, data)| data)
            .ok_or_else(|| {
                EditorError::Invalid(format!(
                    "the editor's {what} is a data URL that is not base64"
                ))
            })?,
        None => encoded,
    };
    let compact: String;
    let payload = if payload.contains(|c: char| c.is_ascii_whitespace()) {
        compact = payload.split_ascii_whitespace().collect();
        &compact
    } else {
        payload
    };
    let bytes = LENIENT
        .decode(payload)
        .map_err(|e| EditorError::Invalid(format!("the editor's {what} is not base64: {e}")))?;
    Image::validate(Bytes::from(bytes), MAX_OUTPUT_PIXELS).map_err(|e| {
        EditorError::Invalid(format!("the editor's {what} is not a usable image: {e}"))
    })
}
