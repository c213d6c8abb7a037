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

/// A refusal: status 125, one line on stderr naming `words`, nothing on stdout.
fn assert_refused(args: &[&str], words: &[&str]) {
    let out = corral(args);
    assert_eq!(out.status.code(), Some(125), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for word in words {
        assert!(err.contains(word), "{args:?}: no `{word}` in {err}");
    }
    assert!(out.stdout.is_empty(), "{args:?}: something on stdout");
}

#[test]
fn completions_refuse_an_unknown_shell_with_status_125() {
    assert_refused(&["completions", "tcsh"], &["tcsh", "bash"]);
}

#[test]
fn man_pages_for_corral_and_each_command() {
    let page = stdout(&corral(&["man"]));
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
    assert_refused(&["man", "frobnicate"], &["frobnicate", "run"]);
}

#[test]
fn the_helper_is_built_next_to_corral() {
    let helper = env!("CARGO_BIN_EXE_corral-helper");
    assert!(std::path::Path::new(helper).is_file());
}
