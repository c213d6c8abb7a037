//! Tells the test kit where cargo puts the workspace's programs: the profile directory
//! (`target/[<triple>/]<profile>`), three levels above this script's `OUT_DIR`
//! (`<profile>/build/corral-testkit-<hash>/out`). The tests are compiled with these paths
//! in them, as they were with `CARGO_BIN_EXE_<name>`, which cargo only gives a package's
//! own tests.

use std::env;
use std::path::Path;

fn main() {
    let out = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let profile_dir = Path::new(&out)
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <profile>/build/<pkg>-<hash>/out");
    let profile_dir = profile_dir.to_str().expect("a UTF-8 target directory");
    let suffix = if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows") {
        ".exe"
    } else {
        ""
    };
    println!("cargo:rustc-env=CORRAL_TESTKIT_BIN_DIR={profile_dir}");
    println!("cargo:rustc-env=CORRAL_TESTKIT_EXE_SUFFIX={suffix}");
    println!("cargo:rerun-if-changed=build.rs");
}
