//! `report.html` (docs/eval.md): self-contained, with its plots, tables and
//! the worst cases' thumbnails; and it opens in Chromium with the plots
//! drawn (the screenshot is kept under the target folder for CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use editthinker_eval::html::{self, thumb_name};
use editthinker_eval::report::{self, CaseRecord};
use serde_json::json;

/// A case whose turns the judge scored `o` (the thinker and the verifier
/// roughly agree with it), the service selecting turn `selected`.
fn case(id: &str, group: &str, selected: u32, o: &[f64]) -> CaseRecord {
    let turns: Vec<serde_json::Value> = o
        .iter()
        .enumerate()
        .map(|(i, &o)| {
            let wobble = ((i * 7 + id.len() * 3) % 5) as f64 * 0.3;
            let thinker = (o + wobble - 0.6).clamp(0.0, 10.0);
            json!({
                "index": i + 1,
                "instruction": format!("turn {} instruction", i + 1),
                "thinker": {"semantic": thinker, "quality": thinker, "overall": thinker},
                "verifier": o * 0.9 + 0.5,
                "judge": {"sc": o, "pq": o, "o": o},
                "editor_ms": 1000,
                "thinker_ms": 500,
            })
        })
        .collect();
    serde_json::from_value(json!({
        "id": id,
        "group": group,
        "language": "en",
        "job_id": format!("job-{id}"),
        "status": "succeeded",
        "error": null,
        "selected_turn": selected,
        "editor_calls": turns.len(),
        "cost": 0.04 * turns.len() as f64,
        "currency": "USD",
        "turns": turns,
    }))
    .unwrap()
}

/// Twelve cases the service made worse (`worse-00` by 0.25 … `worse-11` by
/// 3.0) and eight it made better, in two groups.
fn cases() -> Vec<CaseRecord> {
    let mut cases = Vec::new();
    for k in 0..12 {
        let drop = 0.25 * (k + 1) as f64;
        let group = if k % 2 == 0 { "color" } else { "style" };
        cases.push(case(
            &format!("worse-{k:02}"),
            group,
            2,
            &[8.5, 8.5 - drop, 8.0 - drop / 2.0],
        ));
    }
    for k in 0..8 {
        let gain = 0.4 * k as f64;
        let group = if k % 2 == 0 { "color" } else { "style" };
        cases.push(case(
            &format!("better/{k}"),
            group,
            3,
            &[3.0 + gain / 2.0, 4.0 + gain, 6.0 + gain / 2.0],
        ));
    }
    cases
}

/// A small PNG, a gradient, at `path`.
fn write_thumb(path: &Path, seed: u8) {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, seed.wrapping_mul(37)])
    });
    img.save(path).unwrap();
}

/// A run folder with thumbnails of every case's turns but `worse-09`'s
/// first, and its `report.html` written by `report::write`.
fn run_folder() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let thumbs = dir.path().join("thumbs");
    std::fs::create_dir_all(&thumbs).unwrap();
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        for t in &case.turns {
            if case.id == "worse-09" && t.index == 1 {
                continue;
            }
            write_thumb(&thumbs.join(thumb_name(&case.id, t.index)), i as u8);
        }
    }
    let summary = report::write(dir.path(), &cases).unwrap();
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert_eq!(
        page,
        html::render(&summary, &cases, dir.path()).unwrap(),
        "report::write writes what render renders"
    );
    (dir, page)
}

#[test]
fn thumb_names_keep_safe_characters_only() {
    assert_eq!(thumb_name("car-01", 1), "car-01-t1.png");
    assert_eq!(thumb_name("a.b_C-9", 12), "a.b_C-9-t12.png");
    assert_eq!(thumb_name("better/3", 2), "better_3-t2.png");
    assert_eq!(thumb_name("../x y:é", 3), ".._x_y__-t3.png");
}

#[test]
fn report_html_is_self_contained_with_plots_tables_and_worst_cases() {
    let (_dir, page) = run_folder();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for forbidden in ["http://", "https://", "src=\"//", "href=\"//", "url("] {
        assert!(!page.contains(forbidden), "{forbidden} in the page");
    }
    assert!(!page.contains("<script"), "no scripts");
    assert!(
        page.matches("<svg").count() >= 4,
        "by turn, selections, two scatters"
    );
    assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
    // The plots' text: plotters writes <text> elements, no font files.
    assert!(page.contains("Judge O by turn (mean, 95 % interval)"));
    assert!(page.contains("thinker vs judge O (Spearman ρ = "));
    assert!(page.contains("verifier vs judge O (Spearman ρ = "));
    // The tables' numbers.
    let cases = cases();
    let summary = report::summarize(&cases);
    let sel = summary.selections.unwrap();
    for value in [
        sel.first.mean,
        sel.last.mean,
        sel.service.mean,
        sel.oracle.mean,
    ] {
        assert!(page.contains(&format!("{value:.2}")), "{value:.2}");
    }
    assert!(page.contains(&format!(
        "{:.2} [{:.2}, {:.2}]",
        sel.service.mean, sel.service.lo, sel.service.hi
    )));
    for group in ["color", "style"] {
        let rho = summary.by_group[group].spearman_thinker_judge.unwrap();
        assert!(page.contains(&format!("{rho:.3}")), "ρ of {group}");
    }
    assert!(page.contains(&format!("{:.3}", summary.spearman_verifier_judge.unwrap())));
    assert!(page.contains("editor calls per point of O"));
    let per_point = summary.editor_calls_per_point.expect("a gain");
    assert!(page.contains(&format!("<td>{per_point:.2}</td>")));
    // The ten worst cases, most negative first; the two mildest are left out.
    let worse = &page[page.find("id=\"worse\"").expect("the worst cases' section")..];
    assert!(worse.contains("<p>12 cases whose service selection"));
    let positions: Vec<usize> = (2..12)
        .rev()
        .map(|k| {
            let id = format!("<b class=\"case\">worse-{k:02}</b>");
            worse.find(&id).unwrap_or_else(|| panic!("{id} listed"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(!worse.contains("worse-00<") && !worse.contains("worse-01<"));
    assert!(!worse.contains("better"));
    assert!(worse.contains("<span class=\"neg\">-3.00</span>"));
    // Two thumbnails a case, inline, but worse-09's first turn: a placeholder.
    assert_eq!(worse.matches("src=\"data:image/png;base64,").count(), 19);
    assert_eq!(worse.matches("<div class=\"ph\">").count(), 1);
}

#[test]
fn report_html_without_cases_still_renders() {
    let dir = tempfile::tempdir().unwrap();
    let summary = report::summarize(&[]);
    let page = html::render(&summary, &[], dir.path()).unwrap();
    assert!(page.contains("No judged turns."));
    assert!(page.contains("</html>"));
    assert!(!page.contains("<svg"));
}

/// Where CI keeps what the tests leave: `$CARGO_TARGET_DIR`, or the target
/// folder this test binary was built in (`target/debug/deps/html-…`).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.ancestors().nth(3)?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|p| p.is_file())
}

#[test]
fn report_html_opens_in_chromium_with_its_plots_drawn() {
    let Some(chromium) = chromium() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "chromium is not installed (CI needs it: apt-get install chromium)"
        );
        println!("skipped: chromium is not installed");
        return;
    };
    let (dir, _page) = run_folder();
    let target = target_dir();
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("eval-report.png");
    let kept_page = target.join("eval-report.html");
    std::fs::copy(dir.path().join("report.html"), &kept_page).unwrap();
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(&chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1200,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!(
            "file://{}",
            dir.path().join("report.html").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took over 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "chromium: {status}");
    println!("screenshot of report.html: {}", shot.display());
    let img = image::open(&shot).expect("a PNG screenshot").to_rgb8();
    assert_eq!(img.dimensions(), (1200, 2400));
    let mut colours = std::collections::HashSet::new();
    let (mut ink, mut coloured) = (0usize, 0usize);
    // The first two plots lie in the page's top half (below the title).
    for y in 100..1300 {
        for x in 0..img.width() {
            let [r, g, b] = img.get_pixel(x, y).0;
            colours.insert([r, g, b]);
            if r.min(g).min(b) < 235 {
                ink += 1;
            }
            if r.max(g).max(b) - r.min(g).min(b) > 80 {
                coloured += 1;
            }
        }
    }
    assert!(
        colours.len() > 64,
        "{} colours: plots not drawn?",
        colours.len()
    );
    assert!(ink > 20_000, "{ink} non-white pixels: plots not drawn?");
    assert!(
        coloured > 5_000,
        "{coloured} coloured pixels: plots not drawn?"
    );
}
