//! corral's test kit: the programs the tests run, where cargo puts them, and the helpers
//! the tests and the bench share ([`poll_until`], [`mountinfo`]).
//!
//! The programs are `corral` and `corral-helper` (the `corral-cli` package) and this
//! package's helpers: `corral-testtree` (adversarial process trees), `corral-host` (a
//! program embedding the library) and `corral-wintree` (the Windows trees and job host).
//! Cargo builds them for `cargo test --workspace` (the README's command), because each of
//! the two packages has an integration test of its own. The integration tests at `tests/`
//! are this package's targets, and cargo does not build another package's programs for
//! them: a narrower `cargo test -p corral-testkit` runs the `corral` built last, so build
//! it first (`cargo build -p corral-cli`) or run the README's command.
//!
//! Never published or installed (`publish = false`).

#[cfg(target_os = "linux")]
pub mod mountinfo;
mod poll;

pub use poll::{poll_until, poll_until_every, Described, NotYet, Probe, Until};

/// The directory cargo puts the workspace's programs in for this build
/// (`target/[<triple>/]<profile>`; see `build.rs`).
pub const BIN_DIR: &str = env!("CORRAL_TESTKIT_BIN_DIR");

macro_rules! program {
    ($name:literal) => {
        concat!(
            env!("CORRAL_TESTKIT_BIN_DIR"),
            "/",
            $name,
            env!("CORRAL_TESTKIT_EXE_SUFFIX")
        )
    };
}

/// The CLI.
pub const CORRAL: &str = program!("corral");
/// The setuid helper.
pub const CORRAL_HELPER: &str = program!("corral-helper");
/// Builds adversarial process trees (`corral-testtree --help`).
pub const TESTTREE: &str = program!("corral-testtree");
/// A program embedding the library.
pub const HOST: &str = program!("corral-host");
/// The Windows trees and job host.
pub const WINTREE: &str = program!("corral-wintree");

/// The workspace's root directory: `tests/`, `scripts/` and the fixtures are there.
pub fn workspace_root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the workspace")
}
