//! `Options::pid_namespace` in the library: only `Job::spawn_command` offers it, and only
//! from the main thread (the kernel's parent-death signal follows the spawning thread).
//! Each refusal is an `InvalidOptions` error that names the way out, and leaves no cgroup.

use std::process::Command;

use crate::common::cgroup_options;
use crate::util::{CgroupTree, Sandbox};

#[test]
fn job_spawn_refuses_and_names_spawn_command() {
    let opts = corral::Options {
        pid_namespace: true,
        ..Default::default()
    };
    match corral::Job::spawn(&mut Command::new("true"), &opts) {
        Err(corral::Error::InvalidOptions(msg)) => {
            assert!(msg.contains("Job::spawn_command"), "{msg}")
        }
        Err(e) => panic!("expected InvalidOptions, got {e:?}"),
        Ok(_) => panic!("Job::spawn with pid_namespace must be refused"),
    }
}

#[test]
fn spawn_command_off_the_main_thread_is_refused() {
    let Some(sandbox) = Sandbox::with_cgroup("embed-pidns-thread") else {
        return;
    };
    let opts = corral::Options {
        pid_namespace: true,
        ..cgroup_options(&sandbox)
    };
    // A thread of its own: libtest may run a test on the main thread.
    let result = std::thread::spawn(move || {
        corral::Job::spawn_command(&corral::JobCommand::new("true"), &opts).map(|_| ())
    })
    .join()
    .expect("the spawning thread panicked");
    match result {
        Err(corral::Error::InvalidOptions(msg)) => {
            assert!(msg.contains("main thread"), "{msg}")
        }
        other => panic!("expected InvalidOptions about the main thread, got {other:?}"),
    }
    let jobs = sandbox.cgroup().jobs();
    assert!(
        CgroupTree::children(&jobs).is_empty(),
        "a refused spawn left a job cgroup under {}",
        jobs.display()
    );
}
