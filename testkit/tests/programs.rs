//! The helpers exist where the tests look for them. This test is also what makes
//! `cargo test --workspace` build them: cargo builds a package's programs for its own
//! integration tests only.

use std::path::Path;

#[test]
fn helpers_are_where_the_tests_look() {
    for (path, built) in [
        (
            corral_testkit::TESTTREE,
            env!("CARGO_BIN_EXE_corral-testtree"),
        ),
        (corral_testkit::HOST, env!("CARGO_BIN_EXE_corral-host")),
        (
            corral_testkit::WINTREE,
            env!("CARGO_BIN_EXE_corral-wintree"),
        ),
    ] {
        assert_eq!(Path::new(path), Path::new(built), "the test kit's path");
        assert!(Path::new(path).is_file(), "{path} was not built");
    }
    // The CLI's programs come from another package: built by `cargo test --workspace`.
    for path in [corral_testkit::CORRAL, corral_testkit::CORRAL_HELPER] {
        assert!(
            Path::new(path).is_file(),
            "{path} was not built: run `cargo test --workspace --all-features`, or \
             `cargo build -p corral-cli` before a narrower `cargo test -p corral-testkit`"
        );
    }
}
