//! `corral timeout [OPTION] DURATION COMMAND [ARG]...`: the coreutils `timeout` interface,
//! option for option, run as a corral job (docs/timeout.md). Also what `corral` does when
//! it is called as `timeout` (a link named so).
//!
//! The command line is parsed as `timeout` parses its own (`getopt_long` with `+`: options
//! end at the first operand, DURATION; long options may be abbreviated), then translated to
//! the `corral run` command line that behaves so, which the CLI parses and runs as any
//! other: one path, one set of checks.

use std::ffi::{OsStr, OsString};

/// What a `timeout` command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Timeout {
    /// `--help`: print this and exit 0.
    Help,
    /// `--version`: print the version and exit 0.
    Version,
    /// Run: the equivalent `corral run` arguments (after the program name).
    Run(Vec<OsString>),
}

/// The long options, as `timeout` has them: (name, takes a value).
const LONG: [(&str, bool); 7] = [
    ("signal", true),
    ("kill-after", true),
    ("preserve-status", false),
    ("foreground", false),
    ("verbose", false),
    ("help", false),
    ("version", false),
];

/// The usage text.
pub fn help() -> String {
    "Usage: corral timeout [OPTION] DURATION COMMAND [ARG]...
  or:  corral timeout [OPTION]
Start COMMAND as a corral job, and stop it if still running after DURATION; when it ends,
every process it started is gone.

  --preserve-status   exit with the same status as COMMAND, even when the command times out
  --foreground        accepted for compatibility; COMMAND stays in corral's process group
                        and its children are stopped too (docs/timeout.md)
  -k, --kill-after=DURATION
                      send a KILL signal if COMMAND is still running this long after the
                        initial signal was sent (default: 10s; corral never leaves a job
                        running after its signal)
  -s, --signal=SIGNAL specify the signal to be sent on timeout (a name like 'HUP' or a
                        number; default: TERM)
  -v, --verbose       diagnose to stderr any signal sent upon timeout
      --help          display this help and exit
      --version       output version information and exit

DURATION is a floating point number with an optional suffix: 's' for seconds (the default),
'm' for minutes, 'h' for hours or 'd' for days; corral also takes 'ms', 'us', 'ns', sums
like 1m30s, and exponents (1e3). A duration of 0 disables the associated timeout.

Exit status:
  124  if COMMAND times out, and --preserve-status is not specified
  125  if corral itself fails
  126  if COMMAND is found but cannot be invoked
  127  if COMMAND cannot be found
  137  if COMMAND (or corral) is sent the KILL (9) signal (128+9)
  -    the exit status of COMMAND otherwise; if COMMAND is killed by a signal, corral dies
       of the same signal
"
    .to_string()
}

/// Parses `args` (after `timeout`, or after the `timeout` program name) into what it asks.
/// `Err`: the one-line usage error.
pub fn parse(args: &[OsString]) -> Result<Timeout, String> {
    let mut signal: Option<String> = None;
    let mut kill_after: Option<String> = None;
    let mut preserve = false;
    let mut verbose = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        if arg == "--" {
            i += 1;
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let matches: Vec<&(&str, bool)> =
                LONG.iter().filter(|(l, _)| l.starts_with(name)).collect();
            let (full, takes) = match matches.as_slice() {
                [one] => **one,
                _ if LONG.iter().any(|(l, _)| *l == name) => {
                    *LONG.iter().find(|(l, _)| *l == name).unwrap()
                }
                [] => return Err(format!("unrecognized option '--{name}'")),
                _ => return Err(format!("option '--{name}' is ambiguous")),
            };
            let value = if takes {
                match inline {
                    Some(v) => Some(v),
                    None => {
                        i += 1;
                        Some(
                            args.get(i)
                                .ok_or_else(|| format!("option '--{full}' requires an argument"))?
                                .to_string_lossy()
                                .into_owned(),
                        )
                    }
                }
            } else if inline.is_some() {
                return Err(format!("option '--{full}' doesn't allow an argument"));
            } else {
                None
            };
            match full {
                "signal" => signal = value,
                "kill-after" => kill_after = value,
                "preserve-status" => preserve = true,
                "foreground" => {}
                "verbose" => verbose = true,
                "help" => return Ok(Timeout::Help),
                "version" => return Ok(Timeout::Version),
                _ => unreachable!("every long option is handled"),
            }
            i += 1;
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            // Short options, possibly bundled (`-vs INT`, `-sINT`).
            for (at, c) in arg[1..].char_indices() {
                match c {
                    'v' => verbose = true,
                    's' | 'k' => {
                        let rest = &arg[1 + at + 1..];
                        let value = if rest.is_empty() {
                            i += 1;
                            args.get(i)
                                .ok_or_else(|| format!("option requires an argument -- '{c}'"))?
                                .to_string_lossy()
                                .into_owned()
                        } else {
                            rest.to_string()
                        };
                        if c == 's' {
                            signal = Some(value);
                        } else {
                            kill_after = Some(value);
                        }
                        break;
                    }
                    other => return Err(format!("invalid option -- '{other}'")),
                }
            }
            i += 1;
            continue;
        }
        break;
    }
    let rest = &args[i..];
    let Some((duration, command)) = rest.split_first() else {
        return Err("missing operand".into());
    };
    if command.is_empty() {
        return Err(format!(
            "missing operand after '{}'",
            duration.to_string_lossy()
        ));
    }
    let interval = |text: &str| {
        corral::parse_duration(text)
            .map(|_| ())
            .map_err(|_| format!("invalid time interval '{}'", text.escape_debug()))
    };
    let duration_text = duration.to_string_lossy();
    interval(&duration_text)?;
    let mut run: Vec<OsString> = vec!["run".into(), "--timeout".into(), duration.clone()];
    if let Some(sig) = signal {
        let parsed: corral::Signal = sig
            .parse()
            .map_err(|_| format!("{}: invalid signal", sig.escape_debug()))?;
        run.extend(["--signal".into(), parsed.to_string().into()]);
    }
    if let Some(k) = kill_after {
        interval(&k)?;
        // 0 disables the KILL for `timeout`; corral stops every job it started, so 0 keeps
        // the default grace instead (docs/timeout.md).
        if !corral::parse_duration(&k).is_ok_and(|d| d.is_zero()) {
            run.extend(["--grace".into(), OsString::from(k)]);
        }
    }
    if preserve {
        run.push("--preserve-status".into());
    }
    // `timeout` says nothing unless asked; what it says with -v is the signals it sends.
    run.extend(["--summary".into(), "never".into()]);
    if verbose {
        run.push("--diagnose-timeout-signals".into());
    }
    run.push("--".into());
    run.extend(command.iter().cloned());
    Ok(Timeout::Run(run))
}

/// Whether `corral` was called as `timeout` (a link or copy named so).
pub fn called_as_timeout(argv0: &OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "timeout")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Vec<String>, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args)? {
            Timeout::Run(v) => Ok(v.iter().map(|a| a.to_string_lossy().into_owned()).collect()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn options_translate_to_corral_run() {
        assert_eq!(
            run(&["-s", "INT", "-k5", "--preserve-status", "1.5", "sleep", "9"]).unwrap(),
            [
                "run",
                "--timeout",
                "1.5",
                "--signal",
                "SIGINT",
                "--grace",
                "5",
                "--preserve-status",
                "--summary",
                "never",
                "--",
                "sleep",
                "9"
            ]
        );
        // Abbreviated long options, `=` values, bundles, and options ending at DURATION.
        assert_eq!(
            run(&["--sig=9", "--pres", "-vk", "1", "2", "ls", "-l"]).unwrap(),
            [
                "run",
                "--timeout",
                "2",
                "--signal",
                "SIGKILL",
                "--grace",
                "1",
                "--preserve-status",
                "--summary",
                "never",
                "--diagnose-timeout-signals",
                "--",
                "ls",
                "-l"
            ]
        );
        assert_eq!(
            run(&["--", "0", "true"]).unwrap(),
            ["run", "--timeout", "0", "--summary", "never", "--", "true"]
        );
        assert!(matches!(
            parse(&[OsString::from("--he")]),
            Ok(Timeout::Help)
        ));
    }

    #[test]
    fn bad_command_lines_are_timeouts_messages() {
        for (args, message) in [
            (&[][..], "missing operand"),
            (&["5"][..], "missing operand after '5'"),
            (&["x", "true"][..], "invalid time interval 'x'"),
            (&["-s", "NOPE", "1", "true"][..], "NOPE: invalid signal"),
            (
                &["--bogus", "1", "true"][..],
                "unrecognized option '--bogus'",
            ),
            (&["-x", "1", "true"][..], "invalid option -- 'x'"),
            (&["-k", "-1", "1", "true"][..], "invalid time interval '-1'"),
        ] {
            assert_eq!(run(args).unwrap_err(), message, "{args:?}");
        }
    }
}
