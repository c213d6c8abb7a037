//! What the figures were measured on: kernel, CPU, memory, virtualisation, cgroup layout.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::cgroup::{self, Mount};

/// One `label: value` line per fact, in report order.
pub struct Machine {
    pub facts: Vec<(&'static str, String)>,
}

impl Machine {
    pub fn describe(mount: &Mount) -> Machine {
        let uname = rustix::system::uname();
        let kernel = format!(
            "{} {} {} ({})",
            uname.sysname().to_string_lossy(),
            uname.release().to_string_lossy(),
            uname.machine().to_string_lossy(),
            uname.version().to_string_lossy()
        );
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let nproc = std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "unknown".into());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
            .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let facts = vec![
            ("kernel", kernel),
            ("CPU", cpu),
            ("CPUs online", nproc),
            ("memory", memory),
            ("virtualisation", virtualisation(&cpuinfo)),
            ("cgroup layout", cgroup_layout(mount)),
            ("load average at start", loadavg()),
            ("corral revision", revision()),
        ];
        Machine { facts }
    }
}

/// `VM (...)` when the CPU reports a hypervisor, with whatever names it.
fn virtualisation(cpuinfo: &str) -> String {
    let hypervisor = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    let dmi = ["sys_vendor", "product_name"]
        .iter()
        .filter_map(|f| fs::read_to_string(Path::new("/sys/class/dmi/id").join(f)).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let init = fs::read_to_string("/proc/1/cmdline")
        .map(|c| c.contains("firecracker"))
        .unwrap_or(false);
    let mut what = Vec::new();
    if !dmi.is_empty() {
        what.push(dmi);
    }
    if init {
        what.push("Firecracker microVM".into());
    }
    match (hypervisor, what.is_empty()) {
        (true, true) => "VM (CPU flag `hypervisor`)".into(),
        (true, false) => format!("VM ({}; CPU flag `hypervisor`)", what.join(", ")),
        (false, _) => "no hypervisor flag (bare metal, or a VM that hides it)".into(),
    }
}

/// Which cgroup hierarchies are mounted where, and what cgroup2 offers.
fn cgroup_layout(mount: &Mount) -> String {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let v1: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| {
            let (_, right) = l.split_once(" - ")?;
            let mut r = right.split(' ');
            if r.next() != Some("cgroup") {
                return None;
            }
            let opts = r.nth(1).unwrap_or("");
            let ctrl: Vec<&str> = opts
                .split(',')
                .filter(|o| !matches!(*o, "rw" | "ro") && !o.starts_with("relatime"))
                .collect();
            Some(ctrl.join(","))
        })
        .collect();
    let read = |f: &str| {
        fs::read_to_string(mount.path.join(f))
            .map(|c| c.trim().to_string())
            .unwrap_or_default()
    };
    let or_none = |s: String| if s.is_empty() { "none".to_string() } else { s };
    let controllers = format!(
        "controllers available: {}, enabled for children: {}",
        or_none(read("cgroup.controllers")),
        or_none(read("cgroup.subtree_control"))
    );
    let shape = if v1.is_empty() {
        "unified (cgroup2 only)".to_string()
    } else {
        format!("hybrid: cgroup v1 hierarchies [{}]", v1.join("; "))
    };
    format!(
        "{shape}; cgroup2 at {} ({controllers}); `{}` available",
        mount.path.display(),
        cgroup::KILL
    )
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `abc1234`, plus a note when the library sources differ from that commit.
fn revision() -> String {
    let root = super::workspace_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    match git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]) {
        Some(s) if s.is_empty() => head,
        Some(_) => format!("{head} with uncommitted changes in src/"),
        None => head,
    }
}
