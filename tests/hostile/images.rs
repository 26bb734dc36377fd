//! Hostile cases for image decoding: small files that decode huge.
