//! The hostile suite (issue 20): what an attacker, a faulty provider or a
//! prompt-injected model can send, tried against the real binary. Each
//! module keeps the cases of one area; every case failed before its fix.
//! Storage cases run on Postgres and SQLite.

mod edge;
mod images;
mod intake;
mod net;
mod queue;
mod worker;
