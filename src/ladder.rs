//! The stop ladder, once for every OS: the polite signal (and SIGCONT), the grace, the
//! kill, the wait for the job to empty; and the report's stop steps it records on the way.
//!
//! The ladder decides *when* and *what*; a mechanism ([`Members`]: a cgroup, a walked
//! process tree, a Job Object) decides *how*. [`Ladder`] is a state machine that never
//! blocks: [`Ladder::start`] sends what a stop sends first, and [`Ladder::advance`] does what
//! is due now and says when to look again ([`Next::Wait`]) or hands back the finished
//! [`StopReport`] ([`Next::Done`]). The caller waits on its own events (pidfds,
//! `cgroup.events`, a kqueue, a poll) up to that time, and calls `advance` again.
//!
//! The stages:
//!
//! 1. With a grace ahead, the mechanism may first hold the members still ([`Members::hold`],
//!    pgroup's SIGSTOP; step `freeze`).
//! 2. Unless the grace is zero or the polite signal is SIGKILL: the polite signal and SIGCONT
//!    (a stopped process acts on nothing until it runs; steps `signal`, `continue`), then the
//!    grace, which ends when the job is empty (outcome `Exited`), when it runs out, when a
//!    second SIGINT/SIGTERM arrives at least [`SECOND_SIGNAL_AFTER`] after the first, or at
//!    [`Ladder::kill_now`] (step `grace`). A polite SIGINT is followed by SIGTERM after
//!    [`INT_THEN_TERM`] where the mechanism asks for it.
//! 3. SIGKILL to everything (step `kill`), again every [`Pace::kill_again`], until the job is
//!    empty (`Killed`, step `empty`) or [`KILL_WAIT`] passes without progress (`Survivors`).

use std::time::{Duration, Instant};

use crate::error::Result;
use crate::options::Signal;
use crate::report::{StepKind, StepSignal, StopOutcome, StopReason, StopReport, StopStep};

/// A stop begun with SIGINT (Ctrl+C) sends SIGTERM to what is left this long after it,
/// still within the grace: a shell starts its `&` commands with SIGINT ignored, and a
/// Ctrl+C must not wait out the whole grace on them in silence.
pub(crate) const INT_THEN_TERM: Duration = Duration::from_millis(500);
/// A second SIGINT or SIGTERM cuts the grace short, but only when it comes at least this
/// long after the first signal of the stop: a service manager or batch system often
/// delivers one stop twice at once (systemd to the main process and to a bound scope's
/// cgroup, Slurm's linuxproc to each process in turn), and no person presses Ctrl+C twice
/// in under a tenth of a second.
pub(crate) const SECOND_SIGNAL_AFTER: Duration = Duration::from_millis(100);
/// How long the kill stage waits for the job to empty before reporting survivors, unless
/// it is making progress (see [`Pace::kill_wait_max`]).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);

/// The job's processes as the ladder sees them: what one mechanism does at each step.
pub(crate) trait Members {
    /// Whether no process of the job is left.
    fn is_empty(&mut self) -> Result<bool>;

    /// Before the polite signal, with a grace ahead: stops every member so that none forks
    /// while the ladder runs. How many it holds (the `freeze` step); `None`: this mechanism
    /// does not hold, and there is no such step.
    fn hold(&mut self) -> Option<usize> {
        None
    }

    /// The polite signal to every member, then SIGCONT where it applies.
    fn signal(&mut self, polite: Signal) -> Result<Sent>;

    /// `sig` (and SIGCONT) to what is left, after the polite signal: SIGTERM after a polite
    /// SIGINT ([`INT_THEN_TERM`]). How many it reached.
    fn signal_again(&mut self, sig: Signal) -> Result<usize> {
        self.signal(sig).map(|sent| sent.reached)
    }

    /// Looks for members the polite signal missed (found only now) and gives them it.
    /// How many it reached. Called every [`Pace::late`] during the grace.
    fn signal_late(&mut self, _polite: Signal) -> Result<usize> {
        Ok(0)
    }

    /// SIGKILL to every member.
    fn kill(&mut self) -> Result<Kill>;

    /// SIGKILL again to the members still there; called every [`Pace::kill_again`].
    fn kill_again(&mut self) -> Result<()> {
        Ok(())
    }

    /// How many members are alive: the kill stage's progress check.
    fn live(&mut self) -> Result<usize>;

    /// The kill stage is over: the kill step's process count, when it is known only now
    /// (else the count [`Kill::counted`] gave stays), and how the kill was done.
    fn kill_report(&mut self) -> (Option<usize>, String);

    /// How often the ladder looks again, and what it adds for this mechanism.
    fn pace(&self) -> Pace;

    /// The words of the report's steps.
    fn dialect(&self) -> Dialect {
        Dialect::Unix
    }

    /// The time now (a test's fake clock).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What the polite signal reached.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Processes that got the polite signal (the `signal` step's count).
    pub(crate) reached: usize,
    /// Processes that got SIGCONT after it (the `continue` step); `None`: there is no such
    /// thing on this OS, and no step.
    pub(crate) continued: Option<usize>,
    /// The `signal` step's detail.
    pub(crate) detail: Option<String>,
}

/// What the first SIGKILL reached.
#[derive(Debug, Default)]
pub(crate) struct Kill {
    /// The `kill` step's count, when known now.
    pub(crate) counted: Option<usize>,
    /// The live members the first progress check compares with (`None`: any count is
    /// progress).
    pub(crate) live: Option<usize>,
}

/// How a mechanism paces the ladder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// How often the grace looks for members the polite signal missed; `None`: never.
    pub(crate) late: Option<Duration>,
    /// How often the kill stage sends SIGKILL again; `None`: never.
    pub(crate) kill_again: Option<Duration>,
    /// A kill that is making progress (fewer live members than at the last check, every
    /// [`KILL_WAIT`]) is waited for up to this long in all: on a slow machine dying
    /// processes can take longer than one `KILL_WAIT` to exit. A member that does not die
    /// stops the progress and is reported after one more `KILL_WAIT`. [`KILL_WAIT`]: no
    /// extension.
    pub(crate) kill_wait_max: Duration,
    /// A polite SIGINT is followed by SIGTERM after [`INT_THEN_TERM`].
    pub(crate) int_then_term: bool,
}

/// The words of the report's stop steps. The Windows backend had its own before the ladder
/// was shared; they are kept, since reports are read by programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Linux and macOS: signals named `SIGTERM`, grace `all exited` / `<n> ms passed`, an
    /// `empty` step whenever the job emptied.
    Unix,
    /// Windows: the polite step named by the signal's bare name, grace `the job emptied` /
    /// `grace elapsed`, no signal on the `kill` step, and an `empty` step after every kill
    /// (with a detail when processes are left) but none after a grace that emptied the job.
    #[cfg_attr(not(windows), allow(dead_code))]
    Windows,
}

/// How the grace ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GraceEnd {
    Emptied,
    Elapsed,
    SecondSignal,
    #[cfg_attr(windows, allow(dead_code))]
    KillNow,
}

/// A stop in progress.
#[derive(Debug)]
pub(crate) struct Ladder {
    reason: StopReason,
    t0: Instant,
    steps: Vec<StopStep>,
    /// When the first SIGINT or SIGTERM of this stop arrived (the one that began it, for a
    /// stop of reason `signal`): a second one cuts the grace short.
    first_signal: Option<Instant>,
    /// The members were held (a `freeze` step) before the polite signal.
    held: bool,
    pace: Pace,
    dialect: Dialect,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// The polite signal went out; waiting for the job to empty until `end`.
    Grace {
        end: Instant,
        grace: Duration,
        polite: Signal,
        /// When to look for late members next.
        next_late: Option<Instant>,
        /// Late members that got the polite signal.
        late: usize,
        /// When SIGTERM follows a polite SIGINT; `None` once sent, or not wanted.
        term_at: Option<Instant>,
    },
    /// SIGKILL went out (step `step`); waiting for the job to empty until `until`,
    /// signalling again at `next`.
    Kill {
        step: usize,
        until: Instant,
        next: Option<Instant>,
        /// When SIGKILL went out, and the live members at the last progress check.
        since: Instant,
        live: Option<usize>,
    },
    /// The report was handed out.
    Done,
}

/// What [`Ladder::advance`] says.
#[derive(Debug)]
pub(crate) enum Next {
    /// Nothing more is due before this time (or an event of the job's).
    Wait(Instant),
    /// The ladder is finished; `requested_by` is left to the caller.
    Done(StopReport),
}

impl Ladder {
    /// Begins a stop: a hold, the polite signal and SIGCONT, then the grace; or the kill at
    /// once when `grace` is zero or `polite` is SIGKILL.
    pub(crate) fn start(
        m: &mut impl Members,
        reason: StopReason,
        polite: Signal,
        grace: Duration,
    ) -> Result<Ladder> {
        let t0 = m.now();
        let mut ladder = Ladder {
            reason,
            t0,
            steps: Vec::new(),
            first_signal: (reason == StopReason::Signal).then_some(t0),
            held: false,
            pace: m.pace(),
            dialect: m.dialect(),
            // Until the polite signal or the kill has gone out.
            stage: Stage::Done,
        };
        if !grace.is_zero() {
            if let Some(n) = m.hold() {
                ladder.held = true;
                ladder.step(StepKind::Freeze, Some(Signal::STOP), Some(n), None, m.now());
            }
        }
        if grace.is_zero() || polite == Signal::KILL {
            ladder.enter_kill(m)?;
            return Ok(ladder);
        }
        let sent = m.signal(polite)?;
        let label = ladder.dialect.signal(polite);
        let now = m.now();
        ladder.push(
            StepKind::Signal,
            Some(label),
            Some(sent.reached),
            sent.detail,
            now,
        );
        if let Some(n) = sent.continued {
            ladder.step(StepKind::Continue, Some(Signal::CONT), Some(n), None, now);
        }
        // The grace runs from the polite signal (a hold before it may take a while).
        let now = m.now();
        let pace = ladder.pace;
        ladder.stage = Stage::Grace {
            end: now + grace,
            grace,
            polite,
            next_late: pace.late.map(|every| now + every),
            late: 0,
            term_at: (pace.int_then_term && polite == Signal::INT && INT_THEN_TERM < grace)
                .then(|| now + INT_THEN_TERM),
        };
        Ok(ladder)
    }

    /// Does what is due now. `signals`: signals the supervising program received since the
    /// last call (a second SIGINT/SIGTERM may cut the grace short).
    pub(crate) fn advance(&mut self, m: &mut impl Members, signals: &[Signal]) -> Result<Next> {
        let stop_signal = signals
            .iter()
            .any(|s| matches!(*s, Signal::INT | Signal::TERM));
        let cut_short = stop_signal
            && match self.first_signal {
                Some(first) => m.now().saturating_duration_since(first) >= SECOND_SIGNAL_AFTER,
                // The stop began for another reason (leftovers, a timeout, `corral kill`):
                // this is the first signal, not a second one.
                None => {
                    self.first_signal = Some(m.now());
                    false
                }
            };
        loop {
            let now = m.now();
            match &mut self.stage {
                Stage::Done => unreachable!("a finished ladder is dropped, never advanced"),
                Stage::Grace {
                    end,
                    polite,
                    next_late,
                    late,
                    term_at,
                    ..
                } => {
                    if m.is_empty()? {
                        self.end_grace(GraceEnd::Emptied, m.now());
                        return Ok(Next::Done(self.finish(m, StopOutcome::Exited)));
                    }
                    if cut_short {
                        self.end_grace(GraceEnd::SecondSignal, now);
                        self.enter_kill(m)?;
                        continue;
                    }
                    if now >= *end {
                        self.end_grace(GraceEnd::Elapsed, now);
                        self.enter_kill(m)?;
                        continue;
                    }
                    let (end, polite) = (*end, *polite);
                    if term_at.is_some_and(|at| now >= at) {
                        *term_at = None;
                        let n = m.signal_again(Signal::TERM)?;
                        let detail = format!(
                            "{} ms after SIGINT, to what was left: a shell starts its \
                             background commands with SIGINT ignored",
                            INT_THEN_TERM.as_millis()
                        );
                        let label = self.dialect.signal(Signal::TERM);
                        self.push(
                            StepKind::Signal,
                            Some(label),
                            Some(n),
                            Some(detail),
                            m.now(),
                        );
                        continue;
                    }
                    if let (Some(at), Some(every)) = (*next_late, self.pace.late) {
                        if now >= at {
                            *late += m.signal_late(polite)?;
                            *next_late = Some(now + every);
                        }
                    }
                    let wake = [Some(end), *next_late, *term_at]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(end);
                    return Ok(Next::Wait(wake));
                }
                Stage::Kill {
                    until,
                    next,
                    since,
                    live,
                    ..
                } => {
                    if m.is_empty()? {
                        return Ok(Next::Done(self.finish(m, StopOutcome::Killed)));
                    }
                    if now >= *until {
                        // Still dying, only slowly: wait another KILL_WAIT.
                        if now + KILL_WAIT <= *since + self.pace.kill_wait_max {
                            let left = m.live()?;
                            if live.map_or(true, |before| left < before) {
                                *live = Some(left);
                                *until = now + KILL_WAIT;
                                continue;
                            }
                        }
                        let outcome = if m.is_empty()? {
                            StopOutcome::Killed
                        } else {
                            StopOutcome::Survivors
                        };
                        return Ok(Next::Done(self.finish(m, outcome)));
                    }
                    if let (Some(at), Some(every)) = (*next, self.pace.kill_again) {
                        if now >= at {
                            m.kill_again()?;
                            *next = Some(now + every);
                            continue;
                        }
                    }
                    let wake = next.map_or(*until, |n| n.min(*until));
                    return Ok(Next::Wait(wake));
                }
            }
        }
    }

    /// [`Job::kill`](crate::Job::kill) during the grace: the kill now. Does nothing in
    /// another stage. (Windows stops synchronously: its `kill` never meets a grace.)
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn kill_now(&mut self, m: &mut impl Members) -> Result<()> {
        if matches!(self.stage, Stage::Grace { .. }) {
            self.end_grace(GraceEnd::KillNow, m.now());
            self.enter_kill(m)?;
        }
        Ok(())
    }

    /// SIGKILL to everything; the kill stage begins.
    fn enter_kill(&mut self, m: &mut impl Members) -> Result<()> {
        let now = m.now();
        let kill = m.kill()?;
        let label = match self.dialect {
            Dialect::Unix => Some(StepSignal::Prefixed(Signal::KILL)),
            Dialect::Windows => None,
        };
        self.push(StepKind::Kill, label, kill.counted, None, now);
        self.stage = Stage::Kill {
            step: self.steps.len() - 1,
            until: now + KILL_WAIT,
            next: self.pace.kill_again.map(|every| now + every),
            since: now,
            live: kill.live,
        };
        Ok(())
    }

    /// The `grace` step.
    fn end_grace(&mut self, how: GraceEnd, now: Instant) {
        let Stage::Grace { grace, late, .. } = self.stage else {
            return;
        };
        let late = (self.held && late > 0)
            .then(|| format!("; {late} found after the freeze got the polite signal then"));
        let late = late.unwrap_or_default();
        let detail = match (how, self.dialect) {
            (GraceEnd::Emptied, Dialect::Windows) => "the job emptied".to_string(),
            (GraceEnd::Elapsed, Dialect::Windows) => "grace elapsed".to_string(),
            (GraceEnd::Emptied, Dialect::Unix) => format!("all exited{late}"),
            (GraceEnd::Elapsed, Dialect::Unix) => format!("{} ms passed{late}", grace.as_millis()),
            (GraceEnd::SecondSignal, _) => "cut short by a second signal".to_string(),
            (GraceEnd::KillNow, _) => "cut short by kill()".to_string(),
        };
        self.push(StepKind::Grace, None, None, Some(detail), now);
    }

    /// The stop report: the kill step completed, the `empty` step; the ladder is done.
    fn finish(&mut self, m: &mut impl Members, outcome: StopOutcome) -> StopReport {
        if let Stage::Kill { step, .. } = self.stage {
            let (processes, detail) = m.kill_report();
            let kill = &mut self.steps[step];
            if processes.is_some() {
                kill.processes = processes;
            }
            kill.detail = Some(detail);
        }
        let empty_step = !matches!(
            (self.dialect, outcome),
            (Dialect::Unix, StopOutcome::Survivors) | (Dialect::Windows, StopOutcome::Exited)
        );
        if empty_step {
            let detail = (outcome == StopOutcome::Survivors)
                .then(|| "processes left after the kill".to_string());
            self.push(StepKind::Empty, None, None, detail, m.now());
        }
        self.stage = Stage::Done;
        StopReport {
            reason: self.reason,
            requested_by: None,
            steps: std::mem::take(&mut self.steps),
            outcome,
        }
    }

    fn step(
        &mut self,
        kind: StepKind,
        sig: Option<Signal>,
        processes: Option<usize>,
        detail: Option<String>,
        now: Instant,
    ) {
        self.push(kind, sig.map(StepSignal::Prefixed), processes, detail, now);
    }

    fn push(
        &mut self,
        kind: StepKind,
        signal: Option<StepSignal>,
        processes: Option<usize>,
        detail: Option<String>,
        now: Instant,
    ) {
        self.steps.push(StopStep {
            step: kind,
            signal,
            processes,
            detail,
            at_ms: now.saturating_duration_since(self.t0).as_millis() as u64,
        });
    }
}

impl Dialect {
    /// How a step names the signal it sent.
    fn signal(self, sig: Signal) -> StepSignal {
        match self {
            Dialect::Unix => StepSignal::Prefixed(sig),
            Dialect::Windows => StepSignal::Bare(sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the ladder asked of the mechanism.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Call {
        Hold,
        Signal(Signal),
        Again(Signal),
        Late,
        Kill,
        KillAgain,
        Live,
    }

    /// A job without processes: a fake clock, emptiness on a script, every call recorded.
    struct Mock {
        now: Instant,
        calls: Vec<Call>,
        /// The job is empty from this time on.
        empty_at: Option<Instant>,
        /// The job empties at the first SIGKILL.
        dies_of_kill: bool,
        /// What `hold` says.
        holds: Option<usize>,
        /// What SIGCONT reaches (`None`: no SIGCONT on this OS).
        continued: Option<usize>,
        /// What each `signal_late` finds, in turn.
        late: Vec<usize>,
        /// What `kill` says about the live members.
        kill_live: Option<usize>,
        /// What each `live` says, in turn (then the last one again).
        live: Vec<usize>,
        pace: Pace,
        dialect: Dialect,
    }

    const UNIX: Pace = Pace {
        late: None,
        kill_again: None,
        kill_wait_max: KILL_WAIT,
        int_then_term: false,
    };
    const SECOND: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    impl Mock {
        fn new() -> Mock {
            Mock {
                now: Instant::now(),
                calls: Vec::new(),
                empty_at: None,
                dies_of_kill: false,
                holds: None,
                continued: Some(2),
                late: Vec::new(),
                kill_live: None,
                live: Vec::new(),
                pace: UNIX,
                dialect: Dialect::Unix,
            }
        }

        fn empty_after(mut self, after: Duration) -> Mock {
            self.empty_at = Some(self.now + after);
            self
        }

        fn dies_of_kill(mut self) -> Mock {
            self.dies_of_kill = true;
            self
        }

        fn count(&self, call: Call) -> usize {
            self.calls.iter().filter(|c| **c == call).count()
        }
    }

    impl Members for Mock {
        fn is_empty(&mut self) -> Result<bool> {
            Ok(self.empty_at.is_some_and(|at| self.now >= at))
        }
        fn hold(&mut self) -> Option<usize> {
            self.calls.push(Call::Hold);
            self.holds
        }
        fn signal(&mut self, polite: Signal) -> Result<Sent> {
            self.calls.push(Call::Signal(polite));
            Ok(Sent {
                reached: 3,
                continued: self.continued,
                detail: None,
            })
        }
        fn signal_again(&mut self, sig: Signal) -> Result<usize> {
            self.calls.push(Call::Again(sig));
            Ok(1)
        }
        fn signal_late(&mut self, _polite: Signal) -> Result<usize> {
            self.calls.push(Call::Late);
            Ok(if self.late.is_empty() {
                0
            } else {
                self.late.remove(0)
            })
        }
        fn kill(&mut self) -> Result<Kill> {
            self.calls.push(Call::Kill);
            if self.dies_of_kill {
                self.empty_at = Some(self.now);
            }
            Ok(Kill {
                counted: Some(3),
                live: self.kill_live,
            })
        }
        fn kill_again(&mut self) -> Result<()> {
            self.calls.push(Call::KillAgain);
            Ok(())
        }
        fn live(&mut self) -> Result<usize> {
            self.calls.push(Call::Live);
            Ok(match self.live.len() {
                0 => 0,
                1 => self.live[0],
                _ => self.live.remove(0),
            })
        }
        fn kill_report(&mut self) -> (Option<usize>, String) {
            (None, "mock kill".into())
        }
        fn pace(&self) -> Pace {
            self.pace
        }
        fn dialect(&self) -> Dialect {
            self.dialect
        }
        fn now(&self) -> Instant {
            self.now
        }
    }

    /// Advances as a driver would: sleeps until the time the ladder names, or until the
    /// job empties if that comes first (its event wakes the driver).
    fn drive(ladder: &mut Ladder, m: &mut Mock) -> StopReport {
        for _ in 0..100_000 {
            match ladder.advance(m, &[]).expect("advance") {
                Next::Done(report) => return report,
                Next::Wait(wake) => {
                    assert!(wake > m.now, "a wake-up in the past would spin");
                    m.now = match m.empty_at {
                        Some(at) if at > m.now && at < wake => at,
                        _ => wake,
                    };
                }
            }
        }
        panic!("the ladder never finished");
    }

    fn start(m: &mut Mock, polite: Signal, grace: Duration) -> Ladder {
        Ladder::start(m, StopReason::Requested, polite, grace).expect("start")
    }

    /// Each step as the report's JSON gives it: step, signal, detail.
    type Texts = Vec<(String, Option<String>, Option<String>)>;

    fn steps(report: &StopReport) -> Texts {
        report
            .steps
            .iter()
            .map(|s| {
                let signal = s.signal.map(|sig| sig.to_string());
                (s.step.to_string(), signal, s.detail.clone())
            })
            .collect()
    }

    fn want(steps: &[(&str, Option<&str>, Option<&str>)]) -> Texts {
        let text = |s: Option<&str>| s.map(str::to_string);
        steps
            .iter()
            .map(|&(step, signal, detail)| (step.to_string(), text(signal), text(detail)))
            .collect()
    }

    fn step<'a>(report: &'a StopReport, name: &str) -> &'a StopStep {
        report
            .steps
            .iter()
            .find(|s| s.step.name() == name)
            .unwrap_or_else(|| panic!("no {name} step: {report:?}"))
    }

    #[test]
    fn a_job_empty_at_the_first_look_ends_without_a_kill() {
        let mut m = Mock::new().empty_after(Duration::ZERO);
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Exited);
        assert_eq!(
            steps(&report),
            want(&[
                ("signal", Some("SIGTERM"), None),
                ("continue", Some("SIGCONT"), None),
                ("grace", None, Some("all exited")),
                ("empty", None, None),
            ])
        );
        assert_eq!(m.calls, [Call::Hold, Call::Signal(Signal::TERM)]);
        assert_eq!(report.requested_by, None);
        assert_eq!(report.reason, StopReason::Requested);
    }

    #[test]
    fn a_job_that_empties_within_the_grace_is_not_killed() {
        let mut m = Mock::new().empty_after(ms(300));
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        match ladder.advance(&mut m, &[]).unwrap() {
            Next::Wait(wake) => assert_eq!(wake, t0 + SECOND, "the grace's end"),
            Next::Done(r) => panic!("done at once: {r:?}"),
        }
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Exited);
        assert_eq!(step(&report, "grace").at_ms, 300);
        assert_eq!(step(&report, "signal").processes, Some(3));
        assert_eq!(step(&report, "continue").processes, Some(2));
        assert_eq!(m.count(Call::Kill), 0);
    }

    #[test]
    fn no_grace_kills_at_once_without_a_polite_signal_or_a_hold() {
        let mut m = Mock::new().dies_of_kill();
        m.holds = Some(4);
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(m.calls, [Call::Kill]);
        assert_eq!(report.outcome, StopOutcome::Killed);
        assert_eq!(
            steps(&report),
            want(&[
                ("kill", Some("SIGKILL"), Some("mock kill")),
                ("empty", None, None)
            ])
        );
        assert_eq!(step(&report, "kill").processes, Some(3));
    }

    #[test]
    fn a_polite_sigkill_is_the_kill_after_the_hold() {
        let mut m = Mock::new().dies_of_kill();
        m.holds = Some(4);
        let mut ladder = start(&mut m, Signal::KILL, SECOND);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(m.calls, [Call::Hold, Call::Kill]);
        assert_eq!(
            steps(&report),
            want(&[
                ("freeze", Some("SIGSTOP"), None),
                ("kill", Some("SIGKILL"), Some("mock kill")),
                ("empty", None, None)
            ])
        );
        assert_eq!(step(&report, "freeze").processes, Some(4));
    }

    #[test]
    fn the_grace_running_out_brings_the_kill() {
        let mut m = Mock::new().dies_of_kill();
        let mut ladder = start(&mut m, Signal::HUP, ms(1500));
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Killed);
        assert_eq!(
            steps(&report),
            want(&[
                ("signal", Some("SIGHUP"), None),
                ("continue", Some("SIGCONT"), None),
                ("grace", None, Some("1500 ms passed")),
                ("kill", Some("SIGKILL"), Some("mock kill")),
                ("empty", None, None),
            ])
        );
        assert_eq!(step(&report, "kill").at_ms, 1500);
        assert_eq!(m.count(Call::Kill), 1);
    }

    #[test]
    fn a_second_signal_cuts_the_grace_short_but_not_one_delivered_twice_at_once() {
        let mut m = Mock::new().dies_of_kill();
        let t0 = m.now;
        let mut ladder = Ladder::start(&mut m, StopReason::Signal, Signal::INT, SECOND).unwrap();
        // The same stop delivered again at once (systemd, Slurm): no second signal.
        m.now = t0 + ms(50);
        assert!(matches!(
            ladder.advance(&mut m, &[Signal::TERM]).unwrap(),
            Next::Wait(_)
        ));
        // Neither is a signal other than SIGINT or SIGTERM.
        m.now = t0 + ms(200);
        assert!(matches!(
            ladder.advance(&mut m, &[Signal::HUP]).unwrap(),
            Next::Wait(_)
        ));
        assert_eq!(m.count(Call::Kill), 0);
        m.now = t0 + ms(250);
        let Next::Done(report) = ladder.advance(&mut m, &[Signal::INT]).unwrap() else {
            panic!("the kill did not empty the job");
        };
        assert_eq!(
            step(&report, "grace").detail.as_deref(),
            Some("cut short by a second signal")
        );
        assert_eq!(step(&report, "kill").at_ms, 250);
        assert_eq!(report.outcome, StopOutcome::Killed);
    }

    #[test]
    fn in_a_stop_begun_otherwise_the_first_signal_is_not_a_second_one() {
        let mut m = Mock::new().dies_of_kill();
        let t0 = m.now;
        let mut ladder = Ladder::start(&mut m, StopReason::Timeout, Signal::TERM, SECOND).unwrap();
        m.now = t0 + ms(300);
        assert!(matches!(
            ladder.advance(&mut m, &[Signal::TERM]).unwrap(),
            Next::Wait(_)
        ));
        m.now = t0 + ms(350);
        assert!(matches!(
            ladder.advance(&mut m, &[Signal::TERM]).unwrap(),
            Next::Wait(_)
        ));
        m.now = t0 + ms(400);
        let Next::Done(report) = ladder.advance(&mut m, &[Signal::TERM]).unwrap() else {
            panic!("the kill did not empty the job");
        };
        assert_eq!(
            step(&report, "grace").detail.as_deref(),
            Some("cut short by a second signal")
        );
        assert_eq!(report.reason, StopReason::Timeout);
    }

    #[test]
    fn kill_now_cuts_the_grace_short_and_is_nothing_once_killing() {
        let mut m = Mock::new();
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        m.now = t0 + ms(40);
        ladder.kill_now(&mut m).unwrap();
        ladder.kill_now(&mut m).unwrap();
        assert_eq!(m.count(Call::Kill), 1);
        m.empty_at = Some(t0 + ms(60));
        let report = drive(&mut ladder, &mut m);
        assert_eq!(
            steps(&report),
            want(&[
                ("signal", Some("SIGTERM"), None),
                ("continue", Some("SIGCONT"), None),
                ("grace", None, Some("cut short by kill()")),
                ("kill", Some("SIGKILL"), Some("mock kill")),
                ("empty", None, None),
            ])
        );
        assert_eq!(step(&report, "empty").at_ms, 60);
    }

    #[test]
    fn what_survives_the_kill_wait_is_reported_without_an_empty_step() {
        let mut m = Mock::new();
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Survivors);
        assert_eq!(
            steps(&report),
            want(&[("kill", Some("SIGKILL"), Some("mock kill"))])
        );
        assert_eq!(m.now, t0 + KILL_WAIT);
        // No extension is possible: the live members are not even counted.
        assert_eq!(m.count(Call::Live), 0);
    }

    #[test]
    fn a_kill_making_progress_is_waited_for_until_it_stops() {
        let mut m = Mock::new();
        m.pace.kill_wait_max = Duration::from_secs(120);
        m.kill_live = Some(10);
        m.live = vec![5, 5];
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Survivors);
        // 10 -> 5 is progress (another KILL_WAIT); 5 -> 5 is not.
        assert_eq!(m.now, t0 + 2 * KILL_WAIT);
        assert_eq!(m.count(Call::Live), 2);
    }

    #[test]
    fn a_kill_making_progress_is_waited_for_at_most_kill_wait_max() {
        let mut m = Mock::new();
        m.pace.kill_wait_max = Duration::from_secs(120);
        m.live = (0..100).rev().collect();
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Survivors);
        assert_eq!(m.now, t0 + Duration::from_secs(120));
    }

    #[test]
    fn a_job_that_empties_at_the_kill_wait_s_end_is_killed_not_survived() {
        let mut m = Mock::new();
        let t0 = m.now;
        m.empty_at = Some(t0 + KILL_WAIT);
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Killed);
    }

    #[test]
    fn sigkill_goes_out_again_at_the_mechanism_s_pace() {
        let mut m = Mock::new();
        m.pace.kill_again = Some(ms(100));
        let t0 = m.now;
        m.empty_at = Some(t0 + ms(350));
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        match ladder.advance(&mut m, &[]).unwrap() {
            Next::Wait(wake) => assert_eq!(wake, t0 + ms(100)),
            Next::Done(r) => panic!("done at once: {r:?}"),
        }
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Killed);
        // At 100, 200 and 300 ms.
        assert_eq!(m.count(Call::KillAgain), 3);
        assert_eq!(step(&report, "empty").at_ms, 350);
    }

    #[test]
    fn stopped_members_get_sigcont_where_the_os_has_it() {
        let mut m = Mock::new().empty_after(ms(10));
        m.continued = Some(7);
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        let report = drive(&mut ladder, &mut m);
        let cont = step(&report, "continue");
        assert_eq!(cont.processes, Some(7));
        assert_eq!(cont.signal, Some(StepSignal::Prefixed(Signal::CONT)));

        let mut m = Mock::new().empty_after(ms(10));
        m.continued = None;
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        let report = drive(&mut ladder, &mut m);
        assert!(report.steps.iter().all(|s| s.step != StepKind::Continue));
    }

    #[test]
    fn a_polite_sigint_is_followed_by_sigterm_where_the_mechanism_asks() {
        let mut m = Mock::new().dies_of_kill();
        m.pace.int_then_term = true;
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::INT, Duration::from_secs(2));
        match ladder.advance(&mut m, &[]).unwrap() {
            Next::Wait(wake) => assert_eq!(wake, t0 + INT_THEN_TERM),
            Next::Done(r) => panic!("done at once: {r:?}"),
        }
        let report = drive(&mut ladder, &mut m);
        assert_eq!(m.count(Call::Again(Signal::TERM)), 1);
        let names: Vec<_> = report.steps.iter().map(|s| s.step.name()).collect();
        assert_eq!(
            names,
            ["signal", "continue", "signal", "grace", "kill", "empty"]
        );
        let term = &report.steps[2];
        assert_eq!(term.signal, Some(StepSignal::Prefixed(Signal::TERM)));
        assert_eq!(term.at_ms, 500);
        assert!(term
            .detail
            .as_deref()
            .unwrap()
            .starts_with("500 ms after SIGINT"));

        // Not within a grace of 500 ms or less, not for another polite signal, not where
        // the mechanism does not ask.
        for (polite, grace, asks) in [
            (Signal::INT, ms(500), true),
            (Signal::TERM, SECOND, true),
            (Signal::INT, SECOND, false),
        ] {
            let mut m = Mock::new().dies_of_kill();
            m.pace.int_then_term = asks;
            let mut ladder = start(&mut m, polite, grace);
            drive(&mut ladder, &mut m);
            assert_eq!(m.count(Call::Again(Signal::TERM)), 0, "{polite} {grace:?}");
        }
    }

    #[test]
    fn late_members_get_the_polite_signal_and_a_note_after_a_freeze() {
        let mut m = Mock::new().dies_of_kill();
        m.holds = Some(5);
        m.pace.late = Some(ms(50));
        m.late = vec![1, 0, 2];
        let t0 = m.now;
        let mut ladder = start(&mut m, Signal::TERM, ms(300));
        match ladder.advance(&mut m, &[]).unwrap() {
            Next::Wait(wake) => assert_eq!(wake, t0 + ms(50), "the next walk"),
            Next::Done(r) => panic!("done at once: {r:?}"),
        }
        let report = drive(&mut ladder, &mut m);
        // At 50, 100, ..., 250 ms; at 300 the grace is over.
        assert_eq!(m.count(Call::Late), 5);
        assert_eq!(
            step(&report, "grace").detail.as_deref(),
            Some("300 ms passed; 3 found after the freeze got the polite signal then")
        );

        // Without a freeze (macOS) late members are signalled, but not noted.
        let mut m = Mock::new().empty_after(ms(120));
        m.pace.late = Some(ms(50));
        m.late = vec![1];
        let mut ladder = start(&mut m, Signal::TERM, ms(300));
        let report = drive(&mut ladder, &mut m);
        assert_eq!(m.count(Call::Late), 2);
        assert_eq!(step(&report, "grace").detail.as_deref(), Some("all exited"));
    }

    #[test]
    fn the_windows_dialect_keeps_its_words() {
        let windows = |m: Mock| Mock {
            dialect: Dialect::Windows,
            continued: None,
            ..m
        };
        // Emptied within the grace: no `empty` step.
        let mut m = windows(Mock::new().empty_after(ms(10)));
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Exited);
        assert_eq!(
            steps(&report),
            want(&[
                ("signal", Some("TERM"), None),
                ("grace", None, Some("the job emptied"))
            ])
        );
        // The grace elapsed, then the kill.
        let mut m = windows(Mock::new().dies_of_kill());
        let mut ladder = start(&mut m, Signal::TERM, SECOND);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Killed);
        assert_eq!(
            steps(&report),
            want(&[
                ("signal", Some("TERM"), None),
                ("grace", None, Some("grace elapsed")),
                ("kill", None, Some("mock kill")),
                ("empty", None, None),
            ])
        );
        // Survivors: an `empty` step that says so.
        let mut m = windows(Mock::new());
        let mut ladder = start(&mut m, Signal::TERM, Duration::ZERO);
        let report = drive(&mut ladder, &mut m);
        assert_eq!(report.outcome, StopOutcome::Survivors);
        assert_eq!(
            steps(&report),
            want(&[
                ("kill", None, Some("mock kill")),
                ("empty", None, Some("processes left after the kill")),
            ])
        );
    }

    #[test]
    fn the_kill_step_takes_the_count_known_only_at_the_end() {
        struct Walked(Mock);
        impl Members for Walked {
            fn is_empty(&mut self) -> Result<bool> {
                self.0.is_empty()
            }
            fn signal(&mut self, polite: Signal) -> Result<Sent> {
                self.0.signal(polite)
            }
            fn kill(&mut self) -> Result<Kill> {
                self.0.kill().map(|k| Kill { counted: None, ..k })
            }
            fn live(&mut self) -> Result<usize> {
                self.0.live()
            }
            fn kill_report(&mut self) -> (Option<usize>, String) {
                (Some(9), "walked".into())
            }
            fn pace(&self) -> Pace {
                self.0.pace()
            }
            fn now(&self) -> Instant {
                self.0.now
            }
        }
        let mut m = Walked(Mock::new().dies_of_kill());
        let mut ladder =
            Ladder::start(&mut m, StopReason::Leftovers, Signal::KILL, SECOND).unwrap();
        let Next::Done(report) = ladder.advance(&mut m, &[]).unwrap() else {
            panic!("the kill did not empty the job");
        };
        let kill = step(&report, "kill");
        assert_eq!(kill.processes, Some(9));
        assert_eq!(kill.detail.as_deref(), Some("walked"));
        assert_eq!(report.reason, StopReason::Leftovers);
    }
}
