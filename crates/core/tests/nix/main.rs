//! Compatibility with the real Nix (2.8, Debian's `nix-bin`): fixtures that
//! Nix made, each folder with the `generate.sh` that remakes it, and live
//! comparisons against the `nix-store` and `nix` binaries, which CI installs.

mod nar;
mod narinfo_signing;
