//! Machines in containers: real namespaces, real s6, real processes.

mod container;

type TestResult = Result<(), Box<dyn std::error::Error>>;
