//! The pages and scripts generated from the clap definition: `corral completions` and
//! `corral man`. (The behaviour of `corral run`, `ps`, `kill`, `sweep` and `timeout` is
//! tested in the workspace root's tests/; this test is also what makes
//! `cargo test --workspace` build `corral` and `corral-helper` for them.)

use std::process::{Command, Output};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

fn corral(args: &[&str]) -> Output {
    Command::new(CORRAL)
        .args(args)
        .output()
        .expect("run corral")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

#[test]
fn completions_name_every_command_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef corral"),
        ("fish", "complete -c corral"),
    ] {
        let script = stdout(&corral(&["completions", shell]));
        assert!(
            script.contains(marker),
            "{shell}: no `{marker}` in\n{script}"
        );
        for command in ["run", "ps", "kill", "sweep", "timeout", "man"] {
            assert!(script.contains(command), "{shell}: `{command}` missing");
        }
        // fish spells a long option `-l grace`.
        assert!(script.contains("grace"), "{shell}: run's --grace missing");
    }
}

#[test]
fn completions_refuse_an_unknown_shell_with_status_125() {
    let out = corral(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn man_pages_for_corral_and_each_command() {
    let page = stdout(&corral(&["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH corral 1"),
        "{page}"
    );
    assert!(page.contains(".TH corral 1"), "no title line in\n{page}");
    for command in ["run", "ps", "kill", "sweep"] {
        assert!(
            page.contains(command),
            "corral(1) does not list `{command}`"
        );
    }
    let run = stdout(&corral(&["man", "run"]));
    assert!(run.contains(".TH corral-run 1"), "{run}");
    for option in ["grace", "timeout", "report", "mechanism"] {
        assert!(run.contains(option), "corral-run(1) has no `{option}`");
    }
}

#[test]
fn man_refuses_an_unknown_command_with_status_125() {
    let out = corral(&["man", "frobnicate"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("frobnicate") && err.contains("run"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_helper_is_built_next_to_corral() {
    let helper = env!("CARGO_BIN_EXE_corral-helper");
    assert!(std::path::Path::new(helper).is_file());
}
