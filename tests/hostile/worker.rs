//! Hostile cases for the worker: provider answers that must not stall it.
