//! The end-to-end suite, one test binary: the real `editthinker` binary
//! as a child process against real databases, fake providers that speak
//! their wire protocols, and real tools (browsers, gateways, generated
//! clients) where an area needs them. One module per area; the harness
//! (`tests/common`) compiles once for all of them. The in-process thinker's
//! test (`tests/local_thinker_e2e.rs`) is its own binary: it needs a
//! feature.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod async_editor;
mod browser;
mod build_features;
mod candidates;
mod cli;
mod client_libraries;
mod clients;
mod deploy;
mod docs_links;
mod eval;
mod examples;
mod faults;
mod fuzz;
mod gateway;
mod hostile;
mod job_loop;
mod metrics;
mod readme;
mod retention;
mod sandbox;
mod sse;
mod startup;
mod tenants;
mod thinker_down;
mod traces;
mod usage;
mod viewer;
mod web_apps;
mod webhooks;
