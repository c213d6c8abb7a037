//! What a job asks for: the polite signal, the grace, the leftovers policy, the mechanism,
//! where its cgroup goes, how long it may run and what resources it may use.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Options for one job. `Options::default()` is what `corral run` does without flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Time between the polite signal and SIGKILL. Zero kills at once.
    pub grace: Duration,
    /// The polite signal sent first when the job is stopped.
    pub signal: Signal,
    /// What happens to descendants still running when the main process exits.
    pub leftovers: Leftovers,
    /// Which containment mechanism to use.
    pub mechanism: MechanismRequest,
    /// Where job cgroups are created (a directory on the cgroup2 mount).
    /// `None`: `CORRAL_CGROUP_PARENT`, else `<cgroup2 mount>/corral` where that can be created.
    pub cgroup_parent: Option<PathBuf>,
    /// Stop the job after this long.
    pub timeout: Option<Duration>,
    /// On timeout, report the main process's own status instead of 124.
    pub preserve_status: bool,
    /// Who is the child subreaper of a pgroup job.
    pub supervisor: Supervisor,
    /// Limits need controllers enabled in the cgroup parent, which cgroup v2 allows only
    /// while the parent holds no process. When the parent is the cgroup the calling process
    /// runs in (a delegated cgroup), `true` lets corral move the calling process into
    /// `<parent>/supervisor` first; `false` (the default: the library does not change its
    /// host's cgroup on its own) makes that an error that says so.
    pub move_self_for_limits: bool,
    /// Resource limits written into the job's cgroup before the main process starts
    /// (default: none). Any limit needs the cgroup mechanism and its controller.
    pub limits: Limits,
    /// The job's name in the job registry (`corral ps`, `corral kill NAME`): 1-64
    /// characters of `[A-Za-z0-9._-]`, not starting with `.`, and not the name of another
    /// running job of the same user. `None`: known by its id only.
    pub name: Option<String>,
    /// Record the job in the job registry (see `docs/registry.md`), so `corral ps`, `corral
    /// kill` and `corral sweep` see it, and serve outside stop requests on its control
    /// socket (default: true). If the record cannot be written the job still runs, and the
    /// report says why ([`crate::Report::not_registered`]).
    pub register: bool,
    /// Run the main process as PID 1 of a new PID namespace (`corral run --pid-namespace`):
    /// when it exits, or when the process that spawned it dies, the kernel kills every
    /// other process of the namespace. Needs `Job::spawn_command` (Linux; cgroup mode or
    /// [`Supervisor::InProcess`]), `clone3`, the main thread, and root or unprivileged user
    /// namespaces; cannot be combined with [`Leftovers::Wait`]. See `Job`'s `# Caveats`.
    pub pid_namespace: bool,
    /// Set by the privileged helper (`corral-helper`) for the jobs it runs for others. Not
    /// part of the stable API.
    #[doc(hidden)]
    pub helper: Option<HelperJob>,
    /// Testing and benchmarking knobs; not part of the stable API.
    #[doc(hidden)]
    pub debug: DebugKnobs,
    /// Signals the supervising program passes on to the main process instead of stopping
    /// the job, when its `SignalSource` (Linux) reports them (`corral run --forward`:
    /// HUP to reload a daemon, USR1, WINCH after a terminal resize). Delivered through the
    /// main process's pidfd while it runs; after it exited, dropped. Linux.
    pub forward_signals: SignalSet,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            grace: Duration::from_secs(10),
            signal: Signal::TERM,
            leftovers: Leftovers::Kill,
            mechanism: MechanismRequest::Auto,
            cgroup_parent: None,
            timeout: None,
            preserve_status: false,
            supervisor: Supervisor::Auto,
            move_self_for_limits: false,
            limits: Limits::default(),
            name: None,
            register: true,
            pid_namespace: false,
            helper: None,
            debug: DebugKnobs::default(),
            forward_signals: SignalSet::empty(),
        }
    }
}

/// A job the privileged helper (`corral-helper`) runs for an unprivileged caller. Not part
/// of the stable API.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperJob {
    /// The caller's uid: the registry records it (`on_behalf_of`), and job names are unique
    /// per caller.
    pub caller: u32,
    /// The helper's privileged process, which kills the job and removes its cgroup when
    /// the supervisor (this process, unprivileged by then) dies: it stands in for the
    /// watchdog, so none is started.
    pub guardian: u32,
}

/// Knobs that force fallback paths so tests and benchmarks can exercise them on a kernel
/// that has the fast path. Not part of the stable API.
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugKnobs {
    /// Spawn with fork + a write to `cgroup.procs` instead of `clone3(CLONE_INTO_CGROUP)`.
    pub no_clone_into_cgroup: bool,
    /// Kill with freeze / SIGKILL every member / thaw instead of `cgroup.kill`.
    pub no_cgroup_kill: bool,
    /// Run cgroup jobs without the watchdog: they outlive a supervisor that is killed.
    pub no_watchdog: bool,
}

/// Who is the child subreaper of a pgroup job (the mechanism used where no cgroup can be
/// written). Orphans of the job are re-parented to it, which is how the job keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Supervisor {
    /// A small supervisor process per job: the `corral` binary run as
    /// `corral __supervise`. It is found through `CORRAL_SUPERVISOR`, next to the current
    /// executable (or one directory up, where cargo puts test binaries), then on `PATH`.
    /// Nothing about the calling process changes.
    #[default]
    Auto,
    /// The same, with this `corral` binary.
    Binary(PathBuf),
    /// The calling process itself becomes a child subreaper (a process-wide attribute) and
    /// counts every child of its own as part of the job. Only for a program whose only
    /// children are its jobs, such as the `corral` CLI.
    InProcess,
}

/// What to do with processes of the job that are still running when the main process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftovers {
    /// Stop them with the same sequence as a timeout (the default).
    Kill,
    /// The job lasts until they exit on their own (a timeout still applies).
    Wait,
    /// Stop them as [`Leftovers::Kill`] does, and make the exit status
    /// [`crate::LEFTOVERS_FAILED`] when the main process itself succeeded (exit 0): a leak that a
    /// test runner would call a pass becomes a failure.
    Fail,
}

/// The exit status of a job whose main process exited 0 but left processes behind, under
/// [`Leftovers::Fail`].
pub const LEFTOVERS_FAILED: i32 = 120;

/// `status` as [`Leftovers::Fail`] changes it: [`LEFTOVERS_FAILED`] for a success that
/// `left` processes behind.
pub(crate) fn leftovers_fail(policy: Leftovers, status: i32, left: bool) -> i32 {
    if policy == Leftovers::Fail && status == 0 && left {
        LEFTOVERS_FAILED
    } else {
        status
    }
}

impl FromStr for Leftovers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Leftovers::Kill),
            "wait" => Ok(Leftovers::Wait),
            "fail" => Ok(Leftovers::Fail),
            _ => Err(format!(
                "unknown leftovers policy `{s}`; use `kill`, `wait` or `fail`"
            )),
        }
    }
}

/// The mechanism a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MechanismRequest {
    /// The strongest one available, falling back (and reporting it) when it cannot be had.
    Auto,
    /// A cgroup v2 leaf per job; an error when no writable cgroup can be had.
    Cgroup,
    /// Process group + child subreaper + /proc walk.
    Pgroup,
}

impl FromStr for MechanismRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(MechanismRequest::Auto),
            "cgroup" => Ok(MechanismRequest::Cgroup),
            "pgroup" => Ok(MechanismRequest::Pgroup),
            _ => Err(format!(
                "unknown mechanism `{s}`; use `auto`, `cgroup` or `pgroup`"
            )),
        }
    }
}

/// Resource limits for a job: cgroup v2 controller files written in the job's leaf before
/// its main process is spawned into it. `None` leaves a file at the kernel's default (no
/// limit); `Limits::default()` asks for nothing.
///
/// A limit that cannot be enforced is an error at spawn, never a silent no-op: the job
/// needs the cgroup mechanism, and the cgroup parent must offer the controller (listed in
/// its `cgroup.controllers`). corral enables the controllers it needs (`memory`, `pids`,
/// `cpu`) in the parent's `cgroup.subtree_control` before it creates the leaf. cgroup v2
/// allows that only in a cgroup with no processes of its own: if the parent is the cgroup
/// the calling process runs in (a delegated cgroup), the calling process first moves itself
/// into `<parent>/supervisor` (a process-wide change, reported as
/// [`crate::LimitsReport::moved_self_to`]) if [`Options::move_self_for_limits`] allows it,
/// and it is an error otherwise; a parent with other processes in it is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.max`: the hard memory limit of the whole job, in bytes; above it the kernel
    /// reclaims and then OOM-kills processes of the job.
    pub memory_max: Option<LimitValue>,
    /// `memory.high`: the throttle limit, in bytes; above it the job is slowed down and its
    /// memory reclaimed hard, but nothing is killed.
    pub memory_high: Option<LimitValue>,
    /// `pids.max`: the most tasks (processes and threads) the job may have at once; a fork
    /// beyond it fails with `EAGAIN`.
    pub pids_max: Option<LimitValue>,
    /// `cpu.max`: CPU time the whole job may use per period.
    pub cpu_max: Option<CpuMax>,
    /// `cpu.weight`: the job's share of CPU when CPUs are contended, 1..=10000 (the kernel's
    /// default is 100).
    pub cpu_weight: Option<u16>,
}

impl Limits {
    /// True when no limit is asked for.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Checks the values the types do not rule out (ranges the kernel would refuse).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(w) = self.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(format!("cpu weight {w} is out of range; use 1 to 10000"));
            }
        }
        if self.pids_max == Some(LimitValue::Value(0)) {
            return Err("pids max 0 would not let the command itself start; use 1 or more".into());
        }
        if let Some(c) = &self.cpu_max {
            c.validate()?;
        }
        Ok(())
    }

    /// `(controller, file, value)` for every limit asked for, in a fixed order.
    pub fn files(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = self.memory_max {
            out.push(("memory", "memory.max", v.to_string()));
        }
        if let Some(v) = self.memory_high {
            out.push(("memory", "memory.high", v.to_string()));
        }
        if let Some(v) = self.pids_max {
            out.push(("pids", "pids.max", v.to_string()));
        }
        if let Some(c) = self.cpu_max {
            out.push(("cpu", "cpu.max", c.to_string()));
        }
        if let Some(w) = self.cpu_weight {
            out.push(("cpu", "cpu.weight", w.to_string()));
        }
        out
    }

    /// Drops the limit written to `file` (`memory.max`, ...); false if none is.
    pub fn drop_file(&mut self, file: &str) -> bool {
        match file {
            "memory.max" => self.memory_max.take().is_some(),
            "memory.high" => self.memory_high.take().is_some(),
            "pids.max" => self.pids_max.take().is_some(),
            "cpu.max" => self.cpu_max.take().is_some(),
            "cpu.weight" => self.cpu_weight.take().is_some(),
            _ => false,
        }
    }
}

/// A limit: a number, or `max` (no limit, written as such).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitValue {
    /// No limit (`max` in the cgroup file).
    Max,
    /// This many bytes, or tasks.
    Value(u64),
}

impl LimitValue {
    /// Parses a size in bytes: `max`, a number of bytes, or a number with a binary suffix
    /// `K`, `M`, `G` or `T` (powers of 1024, case-insensitive): `512M`, `1.5G`, `65536`.
    pub fn parse_bytes(s: &str) -> Result<LimitValue, String> {
        let bad = |why: &str| {
            format!(
                "invalid size `{s}`: {why}; use bytes or a K/M/G/T suffix (e.g. `512M`), or `max`"
            )
        };
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(LimitValue::Max);
        }
        let (num, scale) = match t.char_indices().last() {
            None => return Err(bad("empty")),
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let scale: u64 = match c.to_ascii_uppercase() {
                    'K' => 1 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    _ => return Err(bad(&format!("unknown suffix `{c}`"))),
                };
                (&t[..i], scale)
            }
            Some(_) => (t, 1),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return Err(bad("not a number"));
        }
        if scale == 1 && !frac.is_empty() {
            return Err(bad("a fraction of a byte"));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad("too large"))?
        };
        let mut bytes = int * u128::from(scale);
        let mut denom = 1u128;
        for d in frac.bytes().take(12) {
            denom *= 10;
            bytes += u128::from(d - b'0') * u128::from(scale) / denom;
        }
        u64::try_from(bytes)
            .ok()
            .filter(|b| *b < 1 << 62)
            .map(LimitValue::Value)
            .ok_or_else(|| bad("too large"))
    }

    /// Parses a count: `max` or a whole number.
    pub fn parse_count(s: &str) -> Result<LimitValue, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(LimitValue::Max);
        }
        t.parse::<u64>()
            .map(LimitValue::Value)
            .map_err(|_| format!("invalid count `{s}`; use a whole number or `max`"))
    }
}

impl fmt::Display for LimitValue {
    /// The form the cgroup file takes: `max` or the number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Max => f.write_str("max"),
            LimitValue::Value(v) => write!(f, "{v}"),
        }
    }
}

/// `cpu.max`: at most `quota` of CPU time per `period`, for the whole job (a quota above
/// the period allows more than one CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    /// CPU time per period; `None` is no limit (`max`).
    pub quota: Option<Duration>,
    /// The period (1 ms to 1 s; the kernel's default is 100 ms).
    pub period: Duration,
}

impl CpuMax {
    /// The kernel's default period.
    pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);

    fn validate(&self) -> Result<(), String> {
        let ms = Duration::from_millis(1);
        if self.period < ms || self.period > Duration::from_secs(1) {
            return Err(format!(
                "cpu max period {:?} is out of range; use 1ms to 1s",
                self.period
            ));
        }
        if self.quota.is_some_and(|q| q < ms) {
            return Err("cpu max quota is below 1ms, the kernel's minimum".into());
        }
        Ok(())
    }
}

impl FromStr for CpuMax {
    type Err = String;
    /// `QUOTA[/PERIOD]`, both durations with a unit: `50ms` (per 100 ms), `50ms/100ms`,
    /// `2s/1s` (two CPUs), `max`, `max/200ms`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| {
            format!("invalid cpu max `{s}`: {why}; use QUOTA[/PERIOD] with units, e.g. `50ms/100ms` (half a CPU), or `max`")
        };
        let (quota, period) = match s.trim().split_once('/') {
            Some((q, p)) => (q.trim(), Some(p.trim())),
            None => (s.trim(), None),
        };
        let with_unit = |text: &str| -> Result<Duration, String> {
            if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(bad(format!("`{text}` has no unit")));
            }
            parse_duration(text).map_err(bad)
        };
        let quota = if quota.eq_ignore_ascii_case("max") {
            None
        } else {
            Some(with_unit(quota)?)
        };
        let period = match period {
            Some(p) => with_unit(p)?,
            None => CpuMax::DEFAULT_PERIOD,
        };
        let c = CpuMax { quota, period };
        c.validate().map_err(bad)?;
        Ok(c)
    }
}

impl fmt::Display for CpuMax {
    /// The form the cgroup file takes: `$MAX $PERIOD` in microseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota {
            Some(q) => write!(f, "{} {}", q.as_micros(), self.period.as_micros()),
            None => write!(f, "max {}", self.period.as_micros()),
        }
    }
}

/// A signal number (1..=64), named where it has a standard name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

impl Signal {
    /// SIGHUP.
    pub const HUP: Signal = Signal(1);
    /// SIGINT.
    pub const INT: Signal = Signal(2);
    /// SIGQUIT.
    pub const QUIT: Signal = Signal(3);
    /// SIGKILL.
    pub const KILL: Signal = Signal(9);
    /// SIGTERM.
    pub const TERM: Signal = Signal(15);
    /// SIGCONT.
    pub const CONT: Signal = Signal(18);
    /// SIGSTOP.
    pub const STOP: Signal = Signal(19);

    /// The signal with this number, if it is a valid signal (1..=64).
    pub fn from_raw(n: i32) -> Option<Signal> {
        (1..=64).contains(&n).then_some(Signal(n))
    }

    /// The signal number.
    pub fn as_raw(self) -> i32 {
        self.0
    }

    /// The name without `SIG` (`TERM`), or `RTMIN+n` / the number for the others.
    pub fn name(self) -> String {
        if let Some((n, _)) = NAMES.iter().find(|(_, v)| *v == self.0) {
            return (*n).to_string();
        }
        if (34..=64).contains(&self.0) {
            return format!("RTMIN+{}", self.0 - 34);
        }
        self.0.to_string()
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name())
    }
}

impl FromStr for Signal {
    type Err = String;
    /// Accepts `TERM`, `SIGTERM`, `sigterm`, `15`, `RTMIN+3`.
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("unknown signal `{s}`; use a name like TERM or INT, or a number 1-64");
        if let Ok(n) = s.parse::<i32>() {
            return Signal::from_raw(n).ok_or_else(err);
        }
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, n)) = NAMES.iter().find(|(name, _)| *name == bare) {
            return Ok(Signal(*n));
        }
        if let Some(off) = bare.strip_prefix("RTMIN+") {
            if let Ok(k) = off.parse::<i32>() {
                return Signal::from_raw(34 + k).filter(|_| k >= 0).ok_or_else(err);
            }
        }
        Err(err())
    }
}

/// A set of signals, e.g. the mask a job's main process starts with.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SignalSet(u64);

impl SignalSet {
    /// The empty set.
    pub fn empty() -> Self {
        SignalSet(0)
    }

    /// Adds `sig`.
    pub fn insert(&mut self, sig: Signal) {
        self.0 |= 1 << (sig.as_raw() - 1);
    }

    /// Whether `sig` is in the set.
    pub fn contains(&self, sig: Signal) -> bool {
        self.0 & (1 << (sig.as_raw() - 1)) != 0
    }

    /// The signals in the set, in numeric order.
    pub fn iter(&self) -> impl Iterator<Item = Signal> + '_ {
        (1..=64)
            .filter_map(Signal::from_raw)
            .filter(|s| self.contains(*s))
    }
}

impl fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<Signal> for SignalSet {
    fn from_iter<I: IntoIterator<Item = Signal>>(iter: I) -> Self {
        let mut set = SignalSet::empty();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

/// The longest duration [`parse_duration`] gives: larger ones saturate to it (as coreutils
/// `timeout` saturates), and deadline arithmetic on `Instant` stays far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Parses a duration such as `500ms`, `10s`, `1m30s`, `2h`, `1.5s`, `1e3` or `0`.
/// A bare number means seconds (as with coreutils `timeout`); the units are `ns`, `us`,
/// `ms`, `s`, `m`, `h` and `d`; a number may have a fraction and an exponent (`2.5e-1m`);
/// `inf` and anything beyond [`MAX_DURATION`] saturate to it. What `0` means is the
/// caller's (`corral run --timeout 0`: no timeout).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        |why: &str| format!("invalid duration `{s}`: {why}; use e.g. `500ms`, `10s` or `1m30s`");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    if t.starts_with('-') {
        return Err(bad("negative"));
    }
    if ["inf", "infinity"].contains(&t.to_ascii_lowercase().as_str()) {
        return Ok(MAX_DURATION);
    }
    let max_nanos = MAX_DURATION.as_nanos();
    let mut total: u128 = 0; // nanoseconds, saturated at `max_nanos`
    let mut rest = t;
    let mut any = false;
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        if num.is_empty() {
            return Err(bad("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" | "" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(bad(&format!("unknown unit `{unit}`"))),
        };
        if unit.is_empty() && (any || !next.is_empty()) {
            return Err(bad("missing unit"));
        }
        let value = number_times(num, scale, max_nanos).ok_or_else(|| bad("malformed number"))?;
        total = total.saturating_add(value).min(max_nanos);
        any = true;
        rest = next;
    }
    Ok(Duration::from_nanos(total.min(max_nanos) as u64))
}

/// Splits `text` after its leading number: digits, an optional fraction, an optional
/// exponent (`e`, a sign, digits; only when digits follow).
fn split_number(text: &str) -> (&str, &str) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i > 0 && i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        let digits = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > digits {
            i = j;
        }
    }
    text.split_at(i)
}

/// `num` (as [`split_number`] cut it) times `scale`, in whole units, saturated at `max`;
/// `None` when it is no number. Exact for plain decimals; through `f64` with an exponent.
fn number_times(num: &str, scale: u128, max: u128) -> Option<u128> {
    let (mantissa, exponent) = match num.find(['e', 'E']) {
        Some(at) => (&num[..at], Some(&num[at + 1..])),
        None => (num, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return None;
    }
    if let Some(exp) = exponent {
        let exp: i32 = exp.parse().ok()?;
        let value: f64 = mantissa.parse().ok()?;
        let scaled = value * 10f64.powi(exp.clamp(-400, 400)) * scale as f64;
        return Some(if scaled >= max as f64 {
            max
        } else {
            scaled.max(0.0) as u128
        });
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        match int_part.parse::<u128>() {
            Ok(v) => v,
            // Digits only, and too many for u128: saturated.
            Err(_) => return Some(max),
        }
    };
    let mut value = int.saturating_mul(scale);
    let mut denom = 1u128;
    for d in frac_part.bytes().take(18) {
        denom *= 10;
        value = value.saturating_add(u128::from(d - b'0') * scale / denom);
    }
    Some(value.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1e3").unwrap(), Duration::from_secs(1000));
        assert_eq!(parse_duration("2.5e-1m").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1E2s").unwrap(), Duration::from_secs(100));
        assert_eq!(parse_duration(".5").unwrap(), Duration::from_millis(500));
        // Out of range saturates, as with coreutils `timeout`.
        for huge in [
            "99999999999999999999h",
            "1e400",
            "inf",
            "INFINITY",
            "4000000000d",
        ] {
            assert_eq!(parse_duration(huge).unwrap(), MAX_DURATION, "{huge}");
        }
        for bad in [
            "5x", "-1s", "", "s", "1.2.3s", "1m30", "e3", "1e", "1e+", ".",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn sizes() {
        let v = |s: &str| LimitValue::parse_bytes(s).unwrap();
        assert_eq!(v("max"), LimitValue::Max);
        assert_eq!(v("65536"), LimitValue::Value(65536));
        assert_eq!(v("512M"), LimitValue::Value(512 << 20));
        assert_eq!(v("1.5g"), LimitValue::Value(3 << 29));
        assert_eq!(v("4k"), LimitValue::Value(4096));
        for bad in [
            "",
            "M",
            "12X",
            "1.5",
            "-1M",
            "1e3",
            "99999999999T",
            "1.2.3M",
        ] {
            assert!(
                LimitValue::parse_bytes(bad).is_err(),
                "{bad} should be rejected"
            );
        }
        assert_eq!(LimitValue::parse_count("64").unwrap().to_string(), "64");
        assert_eq!(LimitValue::parse_count("MAX").unwrap().to_string(), "max");
        assert!(LimitValue::parse_count("1k").is_err());
    }

    #[test]
    fn cpu_max() {
        let c = |s: &str| s.parse::<CpuMax>().unwrap().to_string();
        assert_eq!(c("50ms/100ms"), "50000 100000");
        assert_eq!(c("50ms"), "50000 100000");
        assert_eq!(c("2s/1s"), "2000000 1000000");
        assert_eq!(c("max"), "max 100000");
        assert_eq!(c("max/200ms"), "max 200000");
        for bad in ["0.5", "50/100", "50ms/2s", "500us", "", "50ms/", "x"] {
            assert!(bad.parse::<CpuMax>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn limits_validate_and_list_files() {
        assert!(Limits::default().is_empty());
        let l = Limits {
            memory_max: Some(LimitValue::Value(1 << 20)),
            pids_max: Some(LimitValue::Max),
            cpu_weight: Some(200),
            ..Limits::default()
        };
        assert!(l.validate().is_ok());
        let files: Vec<_> = l
            .files()
            .into_iter()
            .map(|(c, f, v)| format!("{c} {f} {v}"))
            .collect();
        assert_eq!(
            files,
            [
                "memory memory.max 1048576",
                "pids pids.max max",
                "cpu cpu.weight 200"
            ]
        );
        for bad in [
            Limits {
                cpu_weight: Some(0),
                ..l
            },
            Limits {
                cpu_weight: Some(10_001),
                ..l
            },
            Limits {
                pids_max: Some(LimitValue::Value(0)),
                ..l
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn signal_sets() {
        let set: SignalSet = [Signal::TERM, Signal::from_raw(64).unwrap()]
            .into_iter()
            .collect();
        assert!(set.contains(Signal::TERM) && set.contains(Signal::from_raw(64).unwrap()));
        assert!(!set.contains(Signal::INT));
        assert_eq!(set.iter().count(), 2);
        assert_eq!(format!("{set:?}"), "{SIGTERM, SIGRTMIN+30}");
    }

    #[test]
    fn signals() {
        assert_eq!("TERM".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("sigint".parse::<Signal>().unwrap(), Signal::INT);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::KILL);
        assert_eq!("RTMIN+2".parse::<Signal>().unwrap().as_raw(), 36);
        assert_eq!(Signal::from_raw(36).unwrap().name(), "RTMIN+2");
        for bad in ["NOPE", "0", "65", "-1", "SIG"] {
            assert!(bad.parse::<Signal>().is_err(), "{bad} should be rejected");
        }
    }
}

/// Who the job's first process runs as (see `JobCommand::credentials`, Linux).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Credentials {
    /// The real, effective and saved user id.
    pub uid: u32,
    /// The real, effective and saved group id.
    pub gid: u32,
    /// The supplementary groups, exactly these (empty: none).
    pub groups: Vec<u32>,
}

/// A process resource limit (`setrlimit(2)`) the job's main process starts with, in place
/// of the one it would inherit (see `JobCommand::resource_limits`, Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ResourceLimit {
    /// Which limit.
    pub resource: Resource,
    /// The soft limit (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
}

/// The resource of a [`ResourceLimit`]: `RLIMIT_<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub enum Resource {
    /// `RLIMIT_CPU`: CPU time, in seconds.
    Cpu,
    /// `RLIMIT_FSIZE`: the largest file the process may write, in bytes.
    FileSize,
    /// `RLIMIT_DATA`: the data segment, in bytes.
    Data,
    /// `RLIMIT_STACK`: the main thread's stack, in bytes.
    Stack,
    /// `RLIMIT_CORE`: core dumps, in bytes.
    Core,
    /// `RLIMIT_NOFILE`: one more than the highest descriptor number.
    OpenFiles,
    /// `RLIMIT_NPROC`: processes (threads) of the real user.
    Processes,
    /// `RLIMIT_AS`: the address space, in bytes.
    AddressSpace,
    /// `RLIMIT_MEMLOCK`: locked memory, in bytes.
    LockedMemory,
}

impl Resource {
    /// Every resource, in declaration order.
    pub const ALL: [Resource; 9] = [
        Resource::Cpu,
        Resource::FileSize,
        Resource::Data,
        Resource::Stack,
        Resource::Core,
        Resource::OpenFiles,
        Resource::Processes,
        Resource::AddressSpace,
        Resource::LockedMemory,
    ];

    /// The kernel's name (`RLIMIT_FSIZE`).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "RLIMIT_CPU",
            Resource::FileSize => "RLIMIT_FSIZE",
            Resource::Data => "RLIMIT_DATA",
            Resource::Stack => "RLIMIT_STACK",
            Resource::Core => "RLIMIT_CORE",
            Resource::OpenFiles => "RLIMIT_NOFILE",
            Resource::Processes => "RLIMIT_NPROC",
            Resource::AddressSpace => "RLIMIT_AS",
            Resource::LockedMemory => "RLIMIT_MEMLOCK",
        }
    }
}
