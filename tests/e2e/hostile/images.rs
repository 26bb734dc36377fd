//! Hostile cases for image decoding: small files that decode huge.

use serde_json::json;

use crate::common::*;

/// A PNG declaring `w`×`h` 16-bit RGBA (8 bytes a pixel) whose data is an
/// empty zlib stream: a file of under 100 bytes.
fn png16_rgba_header(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([16, 6, 0, 0, 0]);
    let idat = [0x78u8, 0x9c, 0x03, 0, 0, 0, 0, 1];
    for (kind, data) in [(&b"IHDR"[..], &ihdr[4..]), (b"IDAT", &idat), (b"IEND", &[])] {
        let mut chunk = kind.to_vec();
        chunk.extend(data);
        bytes.extend((data.len() as u32).to_be_bytes());
        bytes.extend(&chunk);
        bytes.extend(crc32(&chunk).to_be_bytes());
    }
    bytes
}

/// A BI_RLE8 BMP declaring `w`×`h` whose data is one run, an end of line
/// and an end of bitmap: 68 bytes for any size (the 1,080-byte
/// bombs carried a 256-colour palette).
fn rle8_bmp(w: i32, h: i32) -> Vec<u8> {
    let rle = [4u8, 1, 0, 0, 0, 1];
    let offset: u32 = 14 + 40 + 8;
    let mut b = b"BM".to_vec();
    b.extend((offset + rle.len() as u32).to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(8u16.to_le_bytes());
    b.extend(1u32.to_le_bytes()); // BI_RLE8
    b.extend((rle.len() as u32).to_le_bytes());
    b.extend([0u8; 8]); // resolution
    b.extend(2u32.to_le_bytes()); // colours used
    b.extend(0u32.to_le_bytes());
    b.extend([0, 0, 0, 0, 0x30, 0x20, 0x10, 0]);
    b.extend(rle);
    b
}

/// Issue 20, finding 5: a 16-bit RGBA PNG under the pixel limit but over
/// the byte limit, and a 68-byte RLE8 BMP declaring 6000×6600 (39.6 Mpx,
/// under the pixel limit), are refused from their headers at intake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_that_decode_huge_from_small_files_are_refused() {
    let env = TestEnv::new(Backend::Sqlite).await;
    let editor = FakeEditor::start().await;
    let thinker = FakeThinker::start().await;
    env.migrate();
    let config = env.config("api", &backends_config(&thinker, &editor, env.dir.path()));
    let service = Service::start("api", &config);

    // 6320² is the case: 40 Mpx (under the default 40 M), 16 bits
    // RGBA = 319.5 MB decoded, twice the 160 MB byte limit.
    let png16 = png16_rgba_header(6320, 6320);
    assert!(png16.len() < 100);
    let (status, problem) = post_json(
        &service,
        "/v1/jobs",
        &job_body(&png16, "add a hat", json!({})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "image_too_large_decoded", "{problem}");
    assert_eq!(problem["field"], "image", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("319539200"),
        "the problem says what the image would cost: {problem}"
    );

    let bomb = rle8_bmp(6000, 6600);
    let (status, problem) = post_json(
        &service,
        "/v1/jobs",
        &job_body(&bomb, "add a hat", json!({})),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "image_too_compressed", "{problem}");
    assert_eq!(problem["field"], "image", "{problem}");

    // The same BMP at a modest size is an ordinary image and accepted: the
    // refusal above is for its declared size, not its format.
    let small = rle8_bmp(600, 660);
    let (status, job) = post_json(
        &service,
        "/v1/jobs",
        &job_body(&small, "add a hat", json!({})),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let ok = png(16, 16, [1, 2, 3]);
    let (status, job) =
        post_json(&service, "/v1/jobs", &job_body(&ok, "add a hat", json!({}))).await;
    assert_eq!(status, 202, "{job}");

    let (_, list) = get_json(&service.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "{list}");
}
