//! bigtop-eval's integration tests: one binary, a module per area.

mod context;
mod fleets;
mod modules;
mod overlays;
mod sources;
mod system;
mod typed;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
