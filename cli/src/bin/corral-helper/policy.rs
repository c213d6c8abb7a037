//! The administrator's policy for `corral-helper`: who may run jobs through it, where their
//! cgroups go, as whom, and under which resource ceilings.
//!
//! The policy is a TOML file of `[[allow]]` rules (see `docs/security.md`). The first rule
//! whose `users` or `groups` names the caller applies; a caller no rule names may do
//! nothing. Unknown keys are errors everywhere, so a typo never loosens a policy, and a
//! value corral's own parsers would refuse is refused when the policy is loaded, with its
//! line and column.
//!
//! Because the helper is setuid root, where the policy lives and who could have written it
//! matter as much as what it says. [`policy_path_for`] derives the path from the helper's
//! own location, never from the caller's environment, and [`load`] reads it only if nobody
//! but root could have put it there: it walks from `/` one component at a time with
//! `O_NOFOLLOW` (a symlink anywhere is refused), checks that every directory is root's and
//! not writable by group or others (a sticky directory such as `/tmp` is accepted, since
//! the root-owned entry below it cannot be renamed away by anyone else), and then that the
//! file itself is a regular file of root's that only root may write. Each check is made on
//! the descriptor it opened, so nothing can be swapped between the check and the read.
//!
//! Each named limit is both the ceiling and the default: [`Rule::apply_limits`] refuses a
//! request above it, and fills in the ceiling for a limit the caller leaves out, so
//! omitting a flag never escapes it. A limit the rule does not name may not be asked for.
//!
//! Accounts are matched on what the user and group databases say about them
//! ([`lookup_account_by_uid`]), never on the calling process's own groups, which a caller
//! could have shaped (a setgid program, `newgrp`).

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::ptr;
use std::time::Duration;

use corral::{CpuMax, LimitValue, Limits};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Where an installed helper finds its policy, relative to its prefix (`/etc/...` for the
/// system prefixes `/`, `/usr` and `/usr/local`).
const POLICY_IN_PREFIX: &str = "etc/corral/helper.toml";

/// The largest policy file [`load`] reads; a bigger one is surely not a policy.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// The document that says how a policy is written and installed (named in errors).
const POLICY_DOCS: &str = "docs/security.md";

/// A loaded policy: its rules, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    /// The `[[allow]]` rules, in file order.
    pub rules: Vec<Rule>,
}

/// One `[[allow]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's position among the `[[allow]]` rules, from 1 (for messages).
    pub index: usize,
    /// Callers the rule applies to, by login name or uid.
    pub users: Vec<Principal>,
    /// Callers the rule applies to by membership (primary or supplementary), by group name
    /// or gid.
    pub groups: Vec<Principal>,
    /// Where the rule's jobs go: relative to the cgroup2 mount, or absolute. Never empty and
    /// without `..`; that an absolute one lies under the mount is for the caller to check.
    pub cgroup_parent: PathBuf,
    /// Accounts `--user` may name besides the caller's own; never root.
    pub run_as: Vec<Principal>,
    /// The ceilings, which are also the defaults; `None` is a limit that may not be asked
    /// for.
    pub max: Limits,
    /// The policy file, for messages.
    path: PathBuf,
}

/// A user or a group as the policy names it: by name, or by number (written `#1001`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A login or group name.
    Name(String),
    /// A uid or gid.
    Id(u32),
}

/// An account as the user and group databases describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The login name (a name that is not UTF-8 is converted lossily; name such an account
    /// in the policy by `#uid`).
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Every group the account belongs to, the primary one first.
    pub groups: Vec<Group>,
    /// The home directory.
    pub home: std::path::PathBuf,
}

/// A group an [`Account`] belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name; `None` when the group database has no entry for the gid, or its name is
    /// not UTF-8 (the group then matches by `#gid` only).
    pub name: Option<String>,
    /// The gid.
    pub gid: u32,
}

/// Where a helper running from `exe` (the canonical path of `/proc/self/exe`) takes its
/// policy: `<prefix>/etc/corral/helper.toml` for a helper at `<prefix>/bin/...` or
/// `<prefix>/sbin/...`, and `/etc/corral/helper.toml` for the system prefixes `/`, `/usr`
/// and `/usr/local`. The file name of the helper does not matter.
pub fn policy_path_for(exe: &Path) -> Result<PathBuf, String> {
    let refuse = || {
        format!(
            "corral-helper runs from {}, which is not <prefix>/bin or <prefix>/sbin; install \
             it as /usr/bin/corral-helper (policy /etc/corral/helper.toml) or \
             <prefix>/bin/corral-helper (policy <prefix>/{POLICY_IN_PREFIX})",
            exe.display()
        )
    };
    if !exe.is_absolute() || exe.components().any(|c| c == Component::ParentDir) {
        return Err(refuse());
    }
    let bin_dir = exe.parent().ok_or_else(refuse)?;
    if !matches!(
        bin_dir.file_name().and_then(OsStr::to_str),
        Some("bin" | "sbin")
    ) {
        return Err(refuse());
    }
    let prefix = bin_dir.parent().ok_or_else(refuse)?;
    if [Path::new("/"), Path::new("/usr"), Path::new("/usr/local")].contains(&prefix) {
        Ok(Path::new("/").join(POLICY_IN_PREFIX))
    } else {
        Ok(prefix.join(POLICY_IN_PREFIX))
    }
}

/// Reads and parses the policy at `path` (absolute), refusing a file anyone but root could
/// have written or replaced: see the module documentation for the checks. Errors are one
/// line that names the path and the fix.
pub fn load(path: &Path) -> Result<Policy, String> {
    let text = read_trusted(path)?;
    parse(&text, path)
}

/// Parses policy text; `path` is only named in messages. Errors are one line with the path
/// and, where it applies, the line and column.
pub fn parse(text: &str, path: &Path) -> Result<Policy, String> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let (line, column) = line_column(text, span.start);
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        let message = e.message().lines().next().unwrap_or("invalid TOML");
        format!("policy {}: {at}{message}", path.display())
    })?;
    let mut rules = Vec::with_capacity(raw.allow.len());
    for (i, spanned) in raw.allow.into_iter().enumerate() {
        let (line, _) = line_column(text, spanned.span().start);
        let r = spanned.into_inner();
        if r.users.is_empty() && r.groups.is_empty() {
            return Err(format!(
                "policy {}: rule {} (line {line}) names no `users` and no `groups`; add whom \
                 it applies to",
                path.display(),
                i + 1
            ));
        }
        rules.push(Rule {
            index: i + 1,
            users: r.users,
            groups: r.groups,
            cgroup_parent: r.cgroup_parent.0,
            run_as: r.run_as.0,
            max: Limits {
                memory_max: r.memory_max.map(|v| v.0),
                memory_high: r.memory_high.map(|v| v.0),
                pids_max: r.pids_max.map(|v| v.0),
                cpu_max: r.cpu_max.map(|v| v.0),
                cpu_weight: r.cpu_weight.map(|v| v.0),
            },
            path: path.to_path_buf(),
        });
    }
    Ok(Policy {
        path: path.to_path_buf(),
        rules,
    })
}

impl Policy {
    /// The first rule that applies to `caller`, if any.
    pub fn rule_for(&self, caller: &Account) -> Option<&Rule> {
        self.rules.iter().find(|r| r.applies_to(caller))
    }
}

impl Rule {
    /// Whether the rule names `caller`: in `users` by name or `#uid`, or one of its groups
    /// in `groups` by name or `#gid`.
    pub fn applies_to(&self, caller: &Account) -> bool {
        self.users
            .iter()
            .any(|u| u.matches(Some(&caller.name), caller.uid))
            || self.groups.iter().any(|g| {
                caller
                    .groups
                    .iter()
                    .any(|cg| g.matches(cg.name.as_deref(), cg.gid))
            })
    }

    /// Whether `caller` may run a job as `target`: as itself always; as another account
    /// only if `run_as` names it (by name or `#uid`), and never as root unless the caller
    /// is root.
    pub fn may_run_as(&self, caller: &Account, target: &Account) -> Result<(), String> {
        if target.uid == caller.uid {
            return Ok(());
        }
        if target.uid == 0 {
            return Err(format!(
                "--user {}: corral-helper never runs a job as root for another user",
                target.name
            ));
        }
        if self
            .run_as
            .iter()
            .any(|p| p.matches(Some(&target.name), target.uid))
        {
            return Ok(());
        }
        let mut allowed = vec![format!("yourself ({})", caller.name)];
        allowed.extend(self.run_as.iter().map(Principal::to_string));
        let last = allowed.pop().unwrap_or_default();
        let allowed = if allowed.is_empty() {
            last
        } else {
            format!("{} or {last}", allowed.join(", "))
        };
        Err(format!(
            "--user {} is not allowed: {} lets you run jobs only as {allowed}",
            target.name,
            self.location(),
        ))
    }

    /// The limits to apply to a job whose caller asked for `requested`: each one the caller
    /// asked for if it is within the rule's maximum, else the maximum itself (a maximum of
    /// `max` leaves the limit unset: a new cgroup starts unlimited). Asking for a limit the
    /// rule does not name, or above its maximum (`max` is above any number), is an error.
    /// `cpu_max` is compared as a rate: quota per period.
    pub fn apply_limits(&self, requested: &Limits) -> Result<Limits, String> {
        let m = &self.max;
        let bytes = |flag, r, m| self.cap_value(flag, r, m, show_bytes);
        let count = |flag, r, m| self.cap_value(flag, r, m, |v: LimitValue| v.to_string());
        Ok(Limits {
            memory_max: bytes("--memory-max", requested.memory_max, m.memory_max)?,
            memory_high: bytes("--memory-high", requested.memory_high, m.memory_high)?,
            pids_max: count("--pids-max", requested.pids_max, m.pids_max)?,
            cpu_max: self.cap_cpu_max(requested.cpu_max, m.cpu_max)?,
            cpu_weight: self.cap_cpu_weight(requested.cpu_weight, m.cpu_weight)?,
        })
    }

    /// `rule 2 of /etc/corral/helper.toml`.
    pub fn location(&self) -> String {
        format!("rule {} of {}", self.index, self.path.display())
    }

    fn not_allowed(&self, flag: &str) -> String {
        format!("the policy allows no {flag} ({})", self.location())
    }

    fn above(&self, flag: &str, asked: &str, max: &str) -> String {
        format!("{flag} {asked} is above the policy's maximum {max}; ask for at most {max}")
    }

    fn cap_value(
        &self,
        flag: &str,
        requested: Option<LimitValue>,
        max: Option<LimitValue>,
        show: impl Fn(LimitValue) -> String,
    ) -> Result<Option<LimitValue>, String> {
        match (requested, max) {
            (None, Some(LimitValue::Max)) | (None, None) => Ok(None),
            (None, max) => Ok(max),
            (Some(_), None) => Err(self.not_allowed(flag)),
            (Some(r), Some(m)) => {
                let over = match (r, m) {
                    (_, LimitValue::Max) => false,
                    (LimitValue::Max, LimitValue::Value(_)) => true,
                    (LimitValue::Value(r), LimitValue::Value(m)) => r > m,
                };
                if over {
                    Err(self.above(flag, &show(r), &show(m)))
                } else {
                    Ok(Some(r))
                }
            }
        }
    }

    fn cap_cpu_max(
        &self,
        requested: Option<CpuMax>,
        max: Option<CpuMax>,
    ) -> Result<Option<CpuMax>, String> {
        match (requested, max) {
            (None, max) => Ok(max.filter(|m| m.quota.is_some())),
            (Some(_), None) => Err(self.not_allowed("--cpu-max")),
            (Some(r), Some(m)) => {
                let over = match (r.quota, m.quota) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    // rq / rp > mq / mp, without division.
                    (Some(rq), Some(mq)) => {
                        rq.as_nanos() * m.period.as_nanos() > mq.as_nanos() * r.period.as_nanos()
                    }
                };
                if over {
                    Err(self.above("--cpu-max", &show_cpu_max(r), &show_cpu_max(m)))
                } else {
                    Ok(Some(r))
                }
            }
        }
    }

    fn cap_cpu_weight(
        &self,
        requested: Option<u16>,
        max: Option<u16>,
    ) -> Result<Option<u16>, String> {
        match (requested, max) {
            (None, max) => Ok(max),
            (Some(_), None) => Err(self.not_allowed("--cpu-weight")),
            (Some(r), Some(m)) if r > m => {
                Err(self.above("--cpu-weight", &r.to_string(), &m.to_string()))
            }
            (Some(r), Some(_)) => Ok(Some(r)),
        }
    }
}

impl Principal {
    /// `name`, `#1001`; a bare number is refused (is it a name or an id?).
    fn parse(s: &str) -> Result<Principal, String> {
        if let Some(id) = s.strip_prefix('#') {
            return id.parse().map(Principal::Id).map_err(|_| {
                format!("`{s}` is not `#` and a number; write a uid or gid as `#1001`")
            });
        }
        if s.is_empty() {
            return Err("an empty name; write a name, or a uid or gid as `#1001`".into());
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "`{s}` is a bare number; write a uid or gid as `#{s}`, or a name"
            ));
        }
        Ok(Principal::Name(s.to_owned()))
    }

    fn matches(&self, name: Option<&str>, id: u32) -> bool {
        match self {
            Principal::Name(n) => name == Some(n.as_str()),
            Principal::Id(i) => *i == id,
        }
    }
}

impl fmt::Display for Principal {
    /// As written in the policy: `ci` or `#1001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Name(n) => f.write_str(n),
            Principal::Id(i) => write!(f, "#{i}"),
        }
    }
}

/// `8G`, `1536M`, `4097`, `max`: the largest binary unit that divides the value exactly.
fn show_bytes(v: LimitValue) -> String {
    let LimitValue::Value(n) = v else {
        return "max".into();
    };
    for (shift, unit) in [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// `200ms/100ms`, `max/100ms`: corral's `--cpu-max` syntax.
fn show_cpu_max(c: CpuMax) -> String {
    let quota = c.quota.map_or_else(|| "max".into(), show_duration);
    format!("{quota}/{}", show_duration(c.period))
}

/// `2s`, `150ms`, `1500us`, `7ns`: the largest unit that divides the duration exactly.
fn show_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (per, unit) in [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")] {
        if ns != 0 && ns % per == 0 {
            return format!("{}{unit}", ns / per);
        }
    }
    format!("{ns}ns")
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

// ---- The file as serde sees it. Each value is checked as it is read, so that a bad one is
// reported with its line and column.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    allow: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    users: Vec<Principal>,
    #[serde(default)]
    groups: Vec<Principal>,
    cgroup_parent: CgroupParent,
    #[serde(default)]
    run_as: RunAs,
    memory_max: Option<Bytes>,
    memory_high: Option<Bytes>,
    pids_max: Option<Count>,
    cpu_max: Option<CpuMaxValue>,
    cpu_weight: Option<CpuWeight>,
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Principal::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// `cgroup_parent`: not empty, no `..`.
struct CgroupParent(PathBuf);

impl<'de> Deserialize<'de> for CgroupParent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let p = PathBuf::from(&s);
        if p.components().all(|c| c == Component::CurDir) || s.contains('\0') {
            return Err(de::Error::custom(format!(
                "cgroup_parent `{s}` names no directory; give a path relative to the cgroup2 \
                 mount, e.g. \"corral-helper/ci\""
            )));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(de::Error::custom(format!(
                "cgroup_parent `{s}` has a `..` component; give the path without it"
            )));
        }
        Ok(CgroupParent(p))
    }
}

/// `run_as`: never root.
#[derive(Default)]
struct RunAs(Vec<Principal>);

impl<'de> Deserialize<'de> for RunAs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Principal>::deserialize(d)?;
        if let Some(root) = list.iter().find(|p| p.matches(Some("root"), 0)) {
            return Err(de::Error::custom(format!(
                "run_as names `{root}`; corral-helper never runs a job as root for another \
                 user, remove it"
            )));
        }
        Ok(RunAs(list))
    }
}

/// A limit written as a TOML integer or string, as text for corral's parsers.
struct LimitText(String);

impl<'de> Deserialize<'de> for LimitText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LimitText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or a string such as \"8G\" or \"max\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LimitText, E> {
                Ok(LimitText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LimitText, E> {
                Ok(LimitText(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LimitText, E> {
                Ok(LimitText(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `memory_max`, `memory_high`: corral's `--memory-max` syntax, or a number of bytes.
struct Bytes(LimitValue);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let LimitText(t) = LimitText::deserialize(d)?;
        LimitValue::parse_bytes(&t)
            .map(Bytes)
            .map_err(de::Error::custom)
    }
}

/// `pids_max`: a number of at least 1, or `max`.
struct Count(LimitValue);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let LimitText(t) = LimitText::deserialize(d)?;
        match LimitValue::parse_count(&t).map_err(de::Error::custom)? {
            LimitValue::Value(0) => Err(de::Error::custom(
                "pids_max 0 would not let a job's command start; use 1 or more",
            )),
            v => Ok(Count(v)),
        }
    }
}

/// `cpu_max`: corral's `--cpu-max` syntax.
struct CpuMaxValue(CpuMax);

impl<'de> Deserialize<'de> for CpuMaxValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let LimitText(t) = LimitText::deserialize(d)?;
        t.parse().map(CpuMaxValue).map_err(de::Error::custom)
    }
}

/// `cpu_weight`: 1..=10000.
struct CpuWeight(u16);

impl<'de> Deserialize<'de> for CpuWeight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = i64::deserialize(d)?;
        u16::try_from(w)
            .ok()
            .filter(|w| (1..=10_000).contains(w))
            .map(CpuWeight)
            .ok_or_else(|| {
                de::Error::custom(format!("cpu_weight {w} is out of range; use 1 to 10000"))
            })
    }
}

// ---- Reading the file only if root alone could have written it.

/// The text of the policy at `path`, opened and checked as the module documentation says.
fn read_trusted(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => names.push(name),
            _ => {
                return Err(format!(
                    "policy path {shown} is not absolute and plain; give it from `/`, without \
                     `.` or `..`"
                ))
            }
        }
    }
    let (Some(file_name), true) = (names.pop(), path.has_root()) else {
        return Err(format!(
            "policy path {shown} is not absolute and plain; give it from `/`, without `.` or \
             `..`"
        ));
    };

    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut walked = PathBuf::from("/");
    let mut dir = rustix::fs::open("/", dir_flags, Mode::empty())
        .map_err(|e| format!("cannot open / (on the way to policy {shown}): {e}"))?;
    check_dir(&dir, &walked)?;
    for name in names {
        walked.push(name);
        let next = rustix::fs::openat(&dir, name, dir_flags, Mode::empty())
            .map_err(|e| refuse_open(&dir, name, &walked, path, e))?;
        check_dir(&next, &walked)?;
        dir = next;
    }

    // A FIFO put where the policy belongs must not hang the helper, a link is not
    // followed, and what is checked is what was opened (`safe_file`).
    use corral::safe_file::Refused;
    let (file, meta) =
        corral::safe_file::open_regular_at(&dir, Path::new(file_name), MAX_POLICY_BYTES).map_err(
            |e| match e {
                Refused::Link => refuse_open(&dir, file_name, path, path, rustix::io::Errno::LOOP),
                Refused::NotRegular(_) => format!(
                    "policy {shown} is not a regular file; an administrator must replace it with \
                     one"
                ),
                Refused::TooLarge { .. } => format!(
                    "cannot read policy {shown}: larger than {} KiB; that is no policy",
                    MAX_POLICY_BYTES >> 10
                ),
                Refused::Io(e) => refuse_open(
                    &dir,
                    file_name,
                    path,
                    path,
                    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
                ),
            },
        )?;
    let st = (
        std::os::unix::fs::MetadataExt::uid(&meta),
        std::os::unix::fs::MetadataExt::mode(&meta),
    );
    if st.0 != 0 {
        return Err(format!(
            "policy {shown} is owned by uid {}, not root; chown root it (it must be root's \
             alone)",
            st.0
        ));
    }
    if st.1 & 0o022 != 0 {
        return Err(format!(
            "policy {shown} is writable by group or others; chmod go-w it (it must be root's \
             alone)"
        ));
    }
    read_capped(file.into()).map_err(|e| format!("cannot read policy {shown}: {e}"))
}

/// Refuses a directory on the way to the policy that anyone but root could change.
fn check_dir(dir: &OwnedFd, walked: &Path) -> Result<(), String> {
    let shown = walked.display();
    let st = rustix::fs::fstat(dir).map_err(|e| format!("cannot stat {shown}: {e}"))?;
    if st.st_uid != 0 {
        return Err(format!(
            "policy directory {shown} is owned by uid {}, not root; chown root it (every \
             directory above the policy must be root's)",
            st.st_uid
        ));
    }
    // A sticky directory (like /tmp) is accepted: nobody else can rename or remove the
    // root-owned entry below it, and that entry is checked next.
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if st.st_mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "policy directory {shown} is writable by group or others; chmod go-w it (every \
             directory above the policy must be root's alone)"
        ));
    }
    Ok(())
}

/// The message for a failed open of `name` in `dir` on the way to (or at) the policy.
fn refuse_open(
    dir: &OwnedFd,
    name: &OsStr,
    walked: &Path,
    policy: &Path,
    e: rustix::io::Errno,
) -> String {
    let (walked, policy) = (walked.display(), policy.display());
    if e == rustix::io::Errno::NOENT {
        return format!(
            "no policy at {policy}; an administrator must create it (see {POLICY_DOCS})"
        );
    }
    let is_symlink = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
    if is_symlink {
        return format!(
            "policy path {walked} is a symbolic link; no part of the policy's path may be one \
             (replace it with the real directory or file)"
        );
    }
    if e == rustix::io::Errno::NOTDIR {
        return format!("policy path {walked} is not a directory (on the way to {policy})");
    }
    format!("cannot open {walked} (on the way to policy {policy}): {e}")
}

/// Reads the whole file, refusing one larger than [`MAX_POLICY_BYTES`] or not UTF-8.
fn read_capped(fd: OwnedFd) -> io::Result<String> {
    let mut bytes = Vec::new();
    File::from(fd)
        .take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(io::Error::other(format!(
            "larger than {} KiB; that is no policy",
            MAX_POLICY_BYTES >> 10
        )));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::other("not UTF-8 text"))
}

// ---- The user and group databases.

/// The account with this uid, from the user and group databases.
pub fn lookup_account_by_uid(uid: u32) -> Result<Account, String> {
    let entry = lookup_entry(
        |pw, buf, result| {
            // SAFETY: `pw` and `result` point to writable storage of their types, and `buf`
            // is writable for `buf.len()` bytes; getpwuid_r writes nowhere else.
            unsafe { libc::getpwuid_r(uid, pw, buf.as_mut_ptr().cast(), buf.len(), result) }
        },
        passwd_fields,
    )
    .map_err(|e| format!("cannot read the user database for uid {uid}: {e}"))?;
    let (name, uid, gid, home) =
        entry.ok_or_else(|| format!("no user with uid {uid} in the user database"))?;
    account(name, uid, gid, home)
}

/// The account with this login name, from the user and group databases.
pub fn lookup_account_by_name(name: &str) -> Result<Account, String> {
    let missing = || format!("no user named `{name}` in the user database");
    let c_name = CString::new(name).map_err(|_| missing())?;
    let entry = lookup_entry(
        |pw, buf, result| {
            // SAFETY: `c_name` is NUL-terminated; `pw` and `result` point to writable storage
            // of their types, and `buf` is writable for `buf.len()` bytes.
            unsafe {
                libc::getpwnam_r(
                    c_name.as_ptr(),
                    pw,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    result,
                )
            }
        },
        passwd_fields,
    )
    .map_err(|e| format!("cannot read the user database for `{name}`: {e}"))?;
    let (name, uid, gid, home) = entry.ok_or_else(missing)?;
    account(name, uid, gid, home)
}

/// Completes an account with its groups: the primary one first, then the supplementary
/// ones from the group database.
fn account(name: CString, uid: u32, gid: u32, home: PathBuf) -> Result<Account, String> {
    let shown = name.to_string_lossy().into_owned();
    let gids = group_list(&name, gid)
        .map_err(|e| format!("cannot read the groups of user `{shown}`: {e}"))?;
    let mut groups: Vec<Group> = Vec::with_capacity(gids.len() + 1);
    for g in std::iter::once(gid).chain(gids) {
        if groups.iter().any(|known| known.gid == g) {
            continue;
        }
        let name = group_name(g)
            .map_err(|e| format!("cannot read the group database for gid {g}: {e}"))?;
        groups.push(Group { name, gid: g });
    }
    Ok(Account {
        name: shown,
        uid,
        gid,
        groups,
        home,
    })
}

/// The name of group `gid`; `None` when it has no entry or its name is not UTF-8.
fn group_name(gid: u32) -> io::Result<Option<String>> {
    let name = lookup_entry(
        |gr, buf, result| {
            // SAFETY: `gr` and `result` point to writable storage of their types, and `buf`
            // is writable for `buf.len()` bytes; getgrgid_r writes nowhere else.
            unsafe { libc::getgrgid_r(gid, gr, buf.as_mut_ptr().cast(), buf.len(), result) }
        },
        |gr: &libc::group| {
            // SAFETY: a group entry's name is a NUL-terminated string in the buffer that
            // `lookup_entry` keeps alive while this runs.
            unsafe { CStr::from_ptr(gr.gr_name) }.to_owned()
        },
    )?;
    Ok(name.and_then(|n| n.into_string().ok()))
}

/// The name, uid, primary gid and home directory of a user entry.
fn passwd_fields(pw: &libc::passwd) -> (CString, u32, u32, PathBuf) {
    // SAFETY: a user entry's name and home are NUL-terminated strings in the buffer that
    // `lookup_entry` keeps alive while this runs (the home may be null with some NSS
    // modules).
    let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
    let home = if pw.pw_dir.is_null() {
        PathBuf::from("/")
    } else {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: as above.
        let dir = unsafe { CStr::from_ptr(pw.pw_dir) };
        PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()))
    };
    (name, pw.pw_uid, pw.pw_gid, home)
}

/// Calls a reentrant lookup in the user or group database (`getpwuid_r`, `getpwnam_r`,
/// `getgrgid_r`: `call(entry, buffer, result)`) with a scratch buffer that grows while the
/// call answers `ERANGE`, and hands the entry to `read`, while the buffer its strings point
/// into is alive. `Ok(None)`: no such entry.
fn lookup_entry<E, T>(
    mut call: impl FnMut(*mut E, &mut [u8], *mut *mut E) -> libc::c_int,
    read: impl FnOnce(&E) -> T,
) -> io::Result<Option<T>> {
    const MAX_BUFFER: usize = 1 << 24;
    let mut buf = vec![0u8; 1024];
    loop {
        let mut entry = MaybeUninit::<E>::uninit();
        let mut result: *mut E = ptr::null_mut();
        match call(entry.as_mut_ptr(), &mut buf, &mut result) {
            // Not found is 0 with no result; some NSS modules say ENOENT instead.
            0 | libc::ENOENT if result.is_null() => return Ok(None),
            // SAFETY: on success `result` points to `entry`, which the call filled in; its
            // strings point into `buf`, which lives until `read` returns.
            0 => return Ok(Some(read(unsafe { &*result }))),
            libc::ERANGE if buf.len() < MAX_BUFFER => buf.resize(buf.len() * 2, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The gids of user `name`'s groups from the group database (`getgrouplist`), including
/// `gid`.
fn group_list(name: &CStr, gid: u32) -> io::Result<Vec<u32>> {
    let mut gids: Vec<libc::gid_t> = vec![0; 64];
    // Each round the buffer grows to what the call asked for; the group database may grow
    // between two calls, so allow a few rounds.
    for _ in 0..8 {
        let mut n = libc::c_int::try_from(gids.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `name` is NUL-terminated, `gids` is writable for `n` entries, and
        // getgrouplist writes at most `n` of them.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, gids.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if rc >= 0 {
            gids.truncate(n);
            return Ok(gids);
        }
        let len = n.max(gids.len() * 2);
        gids.resize(len, 0);
    }
    Err(io::Error::other("getgrouplist kept asking for more room"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/corral/helper.toml";

    const EXAMPLE: &str = r##"
# Who may run jobs through corral-helper, and how.
[[allow]]
users = ["ci", "#1001"]
groups = ["runners"]
cgroup_parent = "corral-helper/ci"
run_as = ["nobody", "#1002"]
memory_max = "8G"
memory_high = "6G"
pids_max = 4096
cpu_max = "200ms/100ms"
cpu_weight = 1000

[[allow]]
groups = ["#2000", "staff"]
cgroup_parent = "/sys/fs/cgroup/corral-helper/staff"
pids_max = "max"
memory_max = "max"
"##;

    fn policy(text: &str) -> Result<Policy, String> {
        parse(text, Path::new(PATH))
    }

    fn err(text: &str) -> String {
        let e = policy(text).expect_err("should be refused");
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.starts_with(&format!("policy {PATH}: ")), "{e}");
        e
    }

    fn rule(body: &str) -> Rule {
        let text = format!("[[allow]]\nusers = [\"ci\"]\ncgroup_parent = \"x\"\n{body}");
        policy(&text).unwrap().rules.remove(0)
    }

    fn account(name: &str, uid: u32, groups: &[(&str, u32)]) -> Account {
        let mut groups: Vec<Group> = groups
            .iter()
            .map(|(n, gid)| Group {
                name: Some(n.to_string()),
                gid: *gid,
            })
            .collect();
        groups.insert(
            0,
            Group {
                name: Some(name.into()),
                gid: uid,
            },
        );
        Account {
            name: name.into(),
            uid,
            gid: uid,
            groups,
            home: PathBuf::from("/"),
        }
    }

    #[test]
    fn parses_a_full_policy() {
        let p = policy(EXAMPLE).unwrap();
        assert_eq!(p.path, Path::new(PATH));
        assert_eq!(p.rules.len(), 2);
        let r = &p.rules[0];
        assert_eq!(r.index, 1);
        assert_eq!(r.users, [Principal::Name("ci".into()), Principal::Id(1001)]);
        assert_eq!(r.groups, [Principal::Name("runners".into())]);
        assert_eq!(r.cgroup_parent, Path::new("corral-helper/ci"));
        assert_eq!(
            r.run_as,
            [Principal::Name("nobody".into()), Principal::Id(1002)]
        );
        assert_eq!(
            r.max,
            Limits {
                memory_max: Some(LimitValue::Value(8 << 30)),
                memory_high: Some(LimitValue::Value(6 << 30)),
                pids_max: Some(LimitValue::Value(4096)),
                cpu_max: Some(CpuMax {
                    quota: Some(Duration::from_millis(200)),
                    period: Duration::from_millis(100)
                }),
                cpu_weight: Some(1000),
            }
        );
        assert_eq!(r.location(), format!("rule 1 of {PATH}"));
        let r = &p.rules[1];
        assert_eq!(r.index, 2);
        assert!(r.users.is_empty() && r.run_as.is_empty());
        assert_eq!(
            r.groups,
            [Principal::Id(2000), Principal::Name("staff".into())]
        );
        assert_eq!(
            r.max,
            Limits {
                memory_max: Some(LimitValue::Max),
                pids_max: Some(LimitValue::Max),
                ..Limits::default()
            }
        );
        // A policy without rules is valid, and allows nobody anything.
        assert!(policy("# nobody yet\n").unwrap().rules.is_empty());
    }

    #[test]
    fn refuses_unknown_keys_anywhere() {
        let e = err("[[allow]]\nusers = [\"ci\"]\ncgroup_parent = \"x\"\nmemory_mx = \"1G\"\n");
        assert!(
            e.contains("line 4, column 1") && e.contains("memory_mx"),
            "{e}"
        );
        let e = err("[[allwo]]\nusers = [\"ci\"]\n");
        assert!(e.contains("allwo"), "{e}");
        let e = err("version = 1\n");
        assert!(e.contains("version"), "{e}");
    }

    #[test]
    fn refuses_bad_rules() {
        let e = err("[[allow]]\ncgroup_parent = \"x\"\n");
        assert!(
            e.contains("rule 1 (line 1)") && e.contains("no `users`"),
            "{e}"
        );
        let e = err("[[allow]]\nusers = []\ngroups = []\ncgroup_parent = \"x\"\n");
        assert!(e.contains("no `users`"), "{e}");
        let e = err("[[allow]]\nusers = [\"ci\"]\n");
        assert!(e.contains("cgroup_parent"), "{e}");
        for parent in ["", ".", "a/../b", "..", "/sys/fs/cgroup/../x"] {
            let e = err(&format!(
                "[[allow]]\nusers = [\"ci\"]\ncgroup_parent = \"{parent}\"\n"
            ));
            assert!(
                e.contains("line 3, column 17") && e.contains("cgroup_parent"),
                "{e}"
            );
        }
        for who in ["root", "#0"] {
            let e = err(&format!(
                "[[allow]]\nusers = [\"ci\"]\ncgroup_parent = \"x\"\nrun_as = [\"nobody\", \"{who}\"]\n"
            ));
            assert!(
                e.contains("line 4") && e.contains("never runs a job as root"),
                "{e}"
            );
        }
        for who in ["", "#", "#x", "#-1", "1001"] {
            let e = err(&format!(
                "[[allow]]\nusers = [\"{who}\"]\ncgroup_parent = \"x\"\n"
            ));
            assert!(e.contains("line 2"), "{e}");
        }
        for (key, value, says) in [
            ("memory_max", "\"8Q\"", "invalid size"),
            ("memory_high", "true", "a number, or a string"),
            ("pids_max", "0", "use 1 or more"),
            ("pids_max", "-3", "invalid count"),
            ("cpu_max", "\"200\"", "invalid cpu max"),
            ("cpu_weight", "0", "out of range"),
            ("cpu_weight", "10001", "out of range"),
            ("cpu_weight", "\"100\"", "invalid type"),
        ] {
            let e = err(&format!(
                "[[allow]]\nusers = [\"ci\"]\ncgroup_parent = \"x\"\n{key} = {value}\n"
            ));
            assert!(
                e.contains("line 4") && e.contains(says),
                "{key} = {value}: {e}"
            );
        }
        let e = err("[[allow]\n");
        assert!(e.contains("line 1"), "{e}");
        // The second rule's problem is reported with its number and line.
        let e = err(&format!("{EXAMPLE}\n[[allow]]\ncgroup_parent = \"x\"\n"));
        assert!(e.contains("rule 3 (line 20)"), "{e}");
    }

    #[test]
    fn the_first_matching_rule_applies() {
        let p = policy(EXAMPLE).unwrap();
        let index = |a: &Account| p.rule_for(a).map(|r| r.index);
        assert_eq!(index(&account("ci", 1500, &[])), Some(1));
        assert_eq!(index(&account("someone", 1001, &[])), Some(1));
        // By a supplementary group's name, or any group's number.
        assert_eq!(index(&account("bob", 1600, &[("runners", 3000)])), Some(1));
        assert_eq!(index(&account("bob", 1600, &[("staff", 50)])), Some(2));
        assert_eq!(index(&account("bob", 1600, &[("other", 2000)])), Some(2));
        // In both rules: the first wins.
        assert_eq!(index(&account("ci", 1500, &[("staff", 50)])), Some(1));
        // The primary group counts too.
        let mut primary = account("carol", 1700, &[]);
        primary.groups[0] = Group {
            name: None,
            gid: 2000,
        };
        assert_eq!(index(&primary), Some(2));
        // A group without a name matches by number only.
        let nameless = Account {
            groups: vec![Group {
                name: None,
                gid: 3000,
            }],
            ..account("dave", 1800, &[])
        };
        assert_eq!(index(&nameless), None);
        assert_eq!(index(&account("eve", 1900, &[("wheel", 10)])), None);
    }

    #[test]
    fn may_run_as_self_listed_and_never_root() {
        let r = &policy(EXAMPLE).unwrap().rules[0];
        let ci = account("ci", 1500, &[]);
        assert_eq!(r.may_run_as(&ci, &ci), Ok(()));
        assert_eq!(r.may_run_as(&ci, &account("nobody", 65534, &[])), Ok(()));
        assert_eq!(r.may_run_as(&ci, &account("svc", 1002, &[])), Ok(()));
        let e = r.may_run_as(&ci, &account("www", 33, &[])).unwrap_err();
        assert_eq!(
            e,
            format!(
                "--user www is not allowed: rule 1 of {PATH} lets you run jobs only as \
                 yourself (ci), nobody or #1002"
            )
        );
        let root = account("root", 0, &[]);
        let e = r.may_run_as(&ci, &root).unwrap_err();
        assert!(e.contains("never runs a job as root"), "{e}");
        // Not even under another name for uid 0.
        assert!(r.may_run_as(&ci, &account("toor", 0, &[])).is_err());
        // Root is just another caller, who may run as root.
        assert_eq!(r.may_run_as(&root, &root), Ok(()));
        assert!(r.may_run_as(&root, &account("www", 33, &[])).is_err());
        let bare = rule("");
        let e = bare
            .may_run_as(&ci, &account("nobody", 65534, &[]))
            .unwrap_err();
        assert!(
            e.ends_with("lets you run jobs only as yourself (ci)"),
            "{e}"
        );
    }

    #[test]
    fn limits_are_ceilings_and_defaults() {
        let r = &policy(EXAMPLE).unwrap().rules[0];
        // Nothing asked: every maximum applies.
        assert_eq!(r.apply_limits(&Limits::default()), Ok(r.max));
        // Asked within: as asked, the rest at the maximum.
        let asked = Limits {
            memory_max: Some(LimitValue::Value(1 << 30)),
            cpu_max: Some("1s/1s".parse().unwrap()),
            cpu_weight: Some(50),
            ..Limits::default()
        };
        assert_eq!(
            r.apply_limits(&asked),
            Ok(Limits {
                memory_max: Some(LimitValue::Value(1 << 30)),
                cpu_max: Some("1s/1s".parse().unwrap()),
                cpu_weight: Some(50),
                ..r.max
            })
        );
        let above = |l: Limits| r.apply_limits(&l).unwrap_err();
        assert_eq!(
            above(Limits {
                memory_max: Some(LimitValue::Value(9 << 30)),
                ..Limits::default()
            }),
            "--memory-max 9G is above the policy's maximum 8G; ask for at most 8G"
        );
        assert_eq!(
            above(Limits {
                memory_high: Some(LimitValue::Max),
                ..Limits::default()
            }),
            "--memory-high max is above the policy's maximum 6G; ask for at most 6G"
        );
        assert_eq!(
            above(Limits {
                pids_max: Some(LimitValue::Value(4097)),
                ..Limits::default()
            }),
            "--pids-max 4097 is above the policy's maximum 4096; ask for at most 4096"
        );
        // 2.1 CPUs over a longer period is still above 2 CPUs.
        assert_eq!(
            above(Limits {
                cpu_max: Some("2100ms/1s".parse().unwrap()),
                ..Limits::default()
            }),
            "--cpu-max 2100ms/1s is above the policy's maximum 200ms/100ms; ask for at most \
             200ms/100ms"
        );
        assert!(above(Limits {
            cpu_max: Some("max".parse().unwrap()),
            ..Limits::default()
        })
        .contains("--cpu-max max/100ms is above"));
        assert_eq!(
            above(Limits {
                cpu_weight: Some(1001),
                ..Limits::default()
            }),
            "--cpu-weight 1001 is above the policy's maximum 1000; ask for at most 1000"
        );
        // Exactly the maximum rate, in another period, is allowed.
        let same_rate = Limits {
            cpu_max: Some("2s/1s".parse().unwrap()),
            ..Limits::default()
        };
        assert!(r.apply_limits(&same_rate).is_ok());

        // A limit the rule does not name may not be asked for; a `max` maximum allows
        // anything and imposes nothing.
        let r = &policy(EXAMPLE).unwrap().rules[1];
        assert_eq!(r.apply_limits(&Limits::default()), Ok(Limits::default()));
        let any = Limits {
            memory_max: Some(LimitValue::Max),
            pids_max: Some(LimitValue::Value(1 << 40)),
            ..Limits::default()
        };
        assert_eq!(r.apply_limits(&any), Ok(any));
        assert_eq!(
            r.apply_limits(&Limits {
                memory_high: Some(LimitValue::Value(1 << 20)),
                ..Limits::default()
            }),
            Err(format!(
                "the policy allows no --memory-high (rule 2 of {PATH})"
            ))
        );
        for asked in [
            Limits {
                cpu_max: Some("max".parse().unwrap()),
                ..Limits::default()
            },
            Limits {
                cpu_weight: Some(100),
                ..Limits::default()
            },
        ] {
            assert!(r
                .apply_limits(&asked)
                .unwrap_err()
                .starts_with("the policy allows no --cpu-"));
        }
        // An unlimited cpu_max maximum: anything goes, nothing is imposed.
        let r = rule("cpu_max = \"max/200ms\"");
        assert_eq!(r.apply_limits(&Limits::default()), Ok(Limits::default()));
        let unlimited = Limits {
            cpu_max: Some("max".parse().unwrap()),
            ..Limits::default()
        };
        assert_eq!(r.apply_limits(&unlimited), Ok(unlimited));
    }

    #[test]
    fn values_are_shown_as_an_administrator_writes_them() {
        let b = |n| show_bytes(LimitValue::Value(n));
        assert_eq!(b(8 << 30), "8G");
        assert_eq!(b(1536 << 20), "1536M");
        assert_eq!(b(3 << 40), "3T");
        assert_eq!(b(4097), "4097");
        assert_eq!(b(0), "0");
        assert_eq!(show_bytes(LimitValue::Max), "max");
        let c = |s: &str| show_cpu_max(s.parse().unwrap());
        assert_eq!(c("50ms"), "50ms/100ms");
        assert_eq!(c("1500us/1s"), "1500us/1s");
        assert_eq!(c("max/200ms"), "max/200ms");
    }

    #[test]
    fn policy_path_follows_the_helper() {
        let p = |exe: &str| policy_path_for(Path::new(exe));
        let etc = Ok(PathBuf::from("/etc/corral/helper.toml"));
        assert_eq!(p("/usr/bin/corral-helper"), etc);
        assert_eq!(p("/usr/sbin/corral-helper"), etc);
        assert_eq!(p("/usr/local/bin/corral-helper"), etc);
        assert_eq!(p("/bin/corral-helper"), etc);
        assert_eq!(p("/sbin/corral-helper"), etc);
        assert_eq!(
            p("/opt/corral/bin/corral-helper"),
            Ok(PathBuf::from("/opt/corral/etc/corral/helper.toml"))
        );
        assert_eq!(
            p("/usr/local/corral/sbin/corral-helper"),
            Ok(PathBuf::from("/usr/local/corral/etc/corral/helper.toml"))
        );
        for bad in [
            "/opt/corral/corral-helper",
            "/home/u/target/debug/corral-helper",
            "corral-helper",
            "bin/corral-helper",
            "/corral-helper",
            "/opt/x/../bin/corral-helper",
        ] {
            let e = p(bad).unwrap_err();
            assert!(
                e.contains("install it as /usr/bin/corral-helper"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn looks_up_accounts_in_the_databases() {
        let root = lookup_account_by_uid(0).unwrap();
        assert_eq!((root.name.as_str(), root.uid, root.gid), ("root", 0, 0));
        assert_eq!(root.groups[0].gid, 0);
        assert_eq!(root.groups[0].name.as_deref(), Some("root"));
        assert_eq!(lookup_account_by_name("root"), Ok(root));
        let nobody = lookup_account_by_name("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        assert_eq!(nobody.groups[0].gid, nobody.gid);
        assert_eq!(
            lookup_account_by_uid(4_000_000_000),
            Err("no user with uid 4000000000 in the user database".into())
        );
        assert_eq!(
            lookup_account_by_name("no-such-user-here"),
            Err("no user named `no-such-user-here` in the user database".into())
        );
        assert!(lookup_account_by_name("a\0b").is_err());
    }

    use crate::test_dir::TempDir;

    #[test]
    fn load_trusts_only_what_root_alone_could_write() {
        use std::os::unix::fs::{chown, symlink, PermissionsExt};
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: load() is checked on root-owned files, and this is not root");
            return;
        }
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let tmp = TempDir::new("policy-load");
        let etc = tmp.0.join("etc");
        let dir = etc.join("corral");
        std::fs::create_dir_all(&dir).unwrap();
        for d in [&tmp.0, &etc, &dir] {
            chown(d, Some(0), Some(0)).unwrap();
            chmod(d, 0o755);
        }
        let file = dir.join("helper.toml");
        std::fs::write(&file, EXAMPLE).unwrap();
        chmod(&file, 0o644);

        assert_eq!(load(&file).unwrap(), policy_at(&file));

        chmod(&file, 0o666);
        assert_eq!(
            load(&file).unwrap_err(),
            format!(
                "policy {} is writable by group or others; chmod go-w it (it must be root's \
                 alone)",
                file.display()
            )
        );
        chmod(&file, 0o644);

        chown(&file, Some(65534), None).unwrap();
        let e = load(&file).unwrap_err();
        assert!(
            e.contains("is owned by uid 65534, not root; chown root it"),
            "{e}"
        );
        chown(&file, Some(0), None).unwrap();

        chmod(&etc, 0o777);
        assert_eq!(
            load(&file).unwrap_err(),
            format!(
                "policy directory {} is writable by group or others; chmod go-w it (every \
                 directory above the policy must be root's alone)",
                etc.display()
            )
        );
        chmod(&etc, 0o1777);
        assert!(load(&file).is_ok(), "a sticky directory is accepted");
        chmod(&etc, 0o755);

        chown(&dir, Some(65534), None).unwrap();
        let e = load(&file).unwrap_err();
        assert!(
            e.contains(&format!(
                "policy directory {} is owned by uid 65534",
                dir.display()
            )),
            "{e}"
        );
        chown(&dir, Some(0), None).unwrap();

        // A symlink to a directory on the way, or as the file itself.
        symlink(&etc, tmp.0.join("link")).unwrap();
        let e = load(&tmp.0.join("link/corral/helper.toml")).unwrap_err();
        assert!(e.contains("link is a symbolic link"), "{e}");
        symlink(&file, dir.join("linked.toml")).unwrap();
        let e = load(&dir.join("linked.toml")).unwrap_err();
        assert!(e.contains("linked.toml is a symbolic link"), "{e}");

        let missing = dir.join("missing.toml");
        assert_eq!(
            load(&missing).unwrap_err(),
            format!(
                "no policy at {}; an administrator must create it (see docs/security.md)",
                missing.display()
            )
        );
        let e = load(&tmp.0.join("etc/corral")).unwrap_err();
        assert!(e.contains("is not a regular file"), "{e}");
        let e = load(&file.join("x")).unwrap_err();
        assert!(e.contains("is not a directory"), "{e}");
        let e = load(Path::new("etc/corral/helper.toml")).unwrap_err();
        assert!(e.contains("is not absolute"), "{e}");

        std::fs::write(&file, vec![b'#'; (MAX_POLICY_BYTES + 1) as usize]).unwrap();
        let e = load(&file).unwrap_err();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    fn policy_at(path: &Path) -> Policy {
        parse(EXAMPLE, path).unwrap()
    }
}
