//! `editthinker-eval`: runs a suite of editing cases through the service's
//! public API, has a judge model score every turn the way the editing
//! benchmarks do (VIEScore), and reports what the thinker bought per editor
//! call (docs/eval.md).
//!
//! Pure parts ([`suite`] filters, [`stats`]) are apart from IO ([`run`]
//! talks to the service, [`judge`] to the judge model, [`report`] writes the
//! run folder).

mod api;
pub mod compare;
pub mod export;
pub mod html;
pub mod judge;
pub mod report;
pub mod run;
pub mod stats;
pub mod suite;
