//! Reading an answer's body whole, under a size limit.

use bytes::{Bytes, BytesMut};

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// It is (or announces it is) larger than the limit.
    TooLarge,
    /// The connection broke or timed out part-way: the request was
    /// received, so for a 2xx the work was done.
    Transport(reqwest::Error),
}

/// The body of `response`, refused as soon as it (or its
/// `Content-Length`) passes `max_bytes` rather than buffered.
pub async fn read_body(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<Bytes, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
