//! The `bigtop` command: store-level operations.

fn main() -> std::process::ExitCode {
    bigtop::cli::main()
}
