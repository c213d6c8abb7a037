//! Bad input: every case exits 125 with a one-line `corral: error: ...` on stderr, starts
//! no COMMAND (the tree never lists itself) and leaves no cgroup and no process (corral
//! runs inside the test's cgroup, which must be empty afterwards).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::{Run, Sandbox};

/// Runs `corral ARGS` as `configure` builds it and checks the rejection.
fn rejected(name: &str, configure: impl FnOnce(&Sandbox, &mut Run)) {
    let sandbox = Sandbox::new(name);
    rejected_in(&sandbox, configure);
}

fn rejected_in(sandbox: &Sandbox, configure: impl FnOnce(&Sandbox, &mut Run)) {
    let mut run = sandbox.corral_bare();
    configure(sandbox, &mut run);
    let done = run.run();
    done.assert_refused(&[]);
    sandbox.assert_clean();
}

#[test]
fn no_subcommand() {
    rejected("no-subcommand", |_, _| {});
}

#[test]
fn unknown_subcommand() {
    rejected("unknown-subcommand", |_, run| {
        run.arg("frobnicate");
    });
}

#[test]
fn no_command() {
    rejected("no-command", |_, run| {
        run.arg("run");
    });
}

#[test]
fn no_command_after_double_dash() {
    rejected("no-command-dash", |_, run| {
        run.args(["run", "--timeout", "1s", "--"]);
    });
}

#[test]
fn unknown_option() {
    rejected("unknown-option", |_, run| {
        run.args(["run", "--frobnicate"]).tree(&["sleep"]);
    });
}

#[test]
fn bad_duration_unit() {
    rejected("duration-unit", |_, run| {
        run.args(["run", "--timeout", "5x"]).tree(&["sleep"]);
    });
}

#[test]
fn bad_grace_duration() {
    rejected("grace-unit", |_, run| {
        run.args(["run", "--grace", "5x"]).tree(&["sleep"]);
    });
}

#[test]
fn negative_duration() {
    rejected("duration-negative", |_, run| {
        run.args(["run", "--timeout=-1s"]).tree(&["sleep"]);
    });
}

#[test]
fn empty_duration() {
    rejected("duration-empty", |_, run| {
        run.args(["run", "--timeout", ""]).tree(&["sleep"]);
    });
}

#[test]
fn unknown_signal_name() {
    rejected("signal-name", |_, run| {
        run.args(["run", "--signal", "SIGNOPE"]).tree(&["sleep"]);
    });
}

#[test]
fn signal_zero() {
    rejected("signal-zero", |_, run| {
        run.args(["run", "--signal", "0"]).tree(&["sleep"]);
    });
}

#[test]
fn signal_out_of_range() {
    rejected("signal-range", |_, run| {
        run.args(["run", "--signal", "65"]).tree(&["sleep"]);
    });
}

#[test]
fn unknown_mechanism() {
    rejected("mechanism", |_, run| {
        run.args(["run", "--mechanism", "bogus"]).tree(&["sleep"]);
    });
}

#[test]
fn unknown_leftovers_policy() {
    rejected("leftovers", |_, run| {
        run.args(["run", "--leftovers", "bogus"]).tree(&["sleep"]);
    });
}

#[test]
fn cgroup_parent_does_not_exist() {
    let Some(sandbox) = Sandbox::with_cgroup("parent-missing") else {
        return;
    };
    rejected_in(&sandbox, |sandbox, run| {
        run.arg("run")
            .arg("--cgroup-parent")
            .arg(sandbox.cgroup().jobs().join("missing"));
        run.tree(&["sleep"]);
    });
}

#[test]
fn cgroup_parent_not_on_cgroup2() {
    let sandbox = Sandbox::new("parent-not-cgroup2");
    let fake = sandbox.dir.join("fake-parent");
    fs::create_dir(&fake).unwrap();
    rejected_in(&sandbox, |_, run| {
        run.arg("run")
            .arg("--cgroup-parent")
            .arg(&fake)
            .tree(&["sleep"]);
    });
    assert_eq!(
        fs::read_dir(&fake).unwrap().count(),
        0,
        "corral created something in {fake:?}"
    );
}

#[test]
fn cgroup_parent_with_dot_dot() {
    let Some(sandbox) = Sandbox::with_cgroup("parent-dotdot") else {
        return;
    };
    rejected_in(&sandbox, |sandbox, run| {
        let jobs = sandbox.cgroup().jobs();
        run.arg("run")
            .arg("--cgroup-parent")
            .arg(jobs.join("..").join("jobs"));
        run.tree(&["sleep"]);
    });
}

/// As root every cgroup directory is writable, so "not writable" is built by running
/// corral as `nobody`. Skipped when `nobody` cannot execute corral from this checkout.
#[test]
fn cgroup_parent_not_writable() {
    const NOBODY: u32 = 65534;
    let Some(sandbox) = Sandbox::with_cgroup("parent-not-writable") else {
        return;
    };
    if !rustix::process::geteuid().is_root() {
        crate::util::skip("cgroup_parent_not_writable: needs root to switch to nobody");
        return;
    }
    if !crate::util::executable_by_others(std::path::Path::new(crate::util::CORRAL)) {
        crate::util::skip(format!(
            "cgroup_parent_not_writable: user nobody cannot execute {}",
            crate::util::CORRAL
        ));
        return;
    }
    rejected_in(&sandbox, |sandbox, run| {
        // So the tree could list itself (and be caught) if corral wrongly started it.
        fs::set_permissions(&run.dir, fs::Permissions::from_mode(0o777)).unwrap();
        run.uid(NOBODY);
        run.arg("run")
            .arg("--cgroup-parent")
            .arg(sandbox.cgroup().jobs());
        run.tree(&["sleep"]);
    });
}

/// A cgroup parent where no child cgroup can be created (`cgroup.max.descendants` 0),
/// with `--mechanism cgroup`: a setup failure.
#[test]
fn cgroup_parent_full_with_mechanism_cgroup() {
    let Some(sandbox) = Sandbox::with_cgroup("parent-full") else {
        return;
    };
    let jobs = sandbox.cgroup().jobs();
    fs::write(jobs.join("cgroup.max.descendants"), "0").unwrap();
    rejected_in(&sandbox, |sandbox, run| {
        run.args(["run", "--mechanism", "cgroup", "--cgroup-parent"]);
        run.arg(sandbox.cgroup().jobs()).tree(&["sleep"]);
    });
}

/// `--mechanism cgroup` when the only cgroup parent on offer (CORRAL_CGROUP_PARENT) is not
/// on cgroup2.
#[test]
fn mechanism_cgroup_without_a_writable_cgroup() {
    let sandbox = Sandbox::new("mechanism-cgroup-env");
    let fake = sandbox.dir.join("fake-parent");
    fs::create_dir(&fake).unwrap();
    rejected_in(&sandbox, |_, run| {
        run.env("CORRAL_CGROUP_PARENT", &fake);
        run.args(["run", "--mechanism", "cgroup"]).tree(&["sleep"]);
    });
    assert_eq!(
        fs::read_dir(&fake).unwrap().count(),
        0,
        "corral created something in {fake:?}"
    );
}

/// Negative values are corral's to refuse, with its own message (clap took `-1` for an
/// option); a name with a newline stays one line (escaped).
#[test]
fn negative_values_and_a_newline_in_a_name_are_one_line_errors() {
    for (option, value) in [
        ("--timeout", "-1"),
        ("--grace", "-2s"),
        ("--memory-max", "-1G"),
        ("--pids-max", "-5"),
        ("--cpu-weight", "-5"),
        ("--name", "a\nb"),
    ] {
        let sandbox = Sandbox::new("negative");
        let mut run = sandbox.corral_bare();
        run.args(["run", option, value]).tree(&["sleep"]);
        let done = run.run();
        done.assert_code(125);
        done.assert_one_line_error();
        assert!(
            done.stderr.contains(&value.escape_debug().to_string())
                && !done.stderr.contains("unexpected argument"),
            "{option} {value:?}: corral's own message naming the value: {:?}",
            done.stderr
        );
        assert!(!done.tree_started(), "COMMAND was started");
        sandbox.assert_clean();
    }
}
