//! A test-harness-like use: start a helper server as a job for the duration of a test, and
//! make sure it and everything it spawned are gone when the test is done, whether the test
//! passed, failed or panicked (the `Job` is dropped either way).
//!
//! ```text
//! cargo run --example test_harness
//! ```

#[cfg(target_os = "linux")]
mod imp {
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// A fixture that owns a background job; dropping it kills the whole job.
    struct Fixture {
        job: corral::Job,
    }

    impl Fixture {
        fn start(script: &str) -> Result<Fixture, corral::Error> {
            let opts = corral::Options {
                grace: Duration::from_secs(1),
                ..Default::default()
            };
            let job = corral::Job::spawn(Command::new("sh").arg("-c").arg(script), &opts)?;
            Ok(Fixture { job })
        }

        fn members(&self) -> usize {
            self.job.members().map(|m| m.len()).unwrap_or(0)
        }

        /// Whether the server is still up; never blocks.
        fn running(&mut self) -> Result<bool, corral::Error> {
            Ok(self.job.try_wait()?.is_none())
        }

        /// Ends the fixture politely (SIGTERM, grace, SIGKILL) and returns what happened.
        fn finish(mut self) -> Result<corral::Report, corral::Error> {
            self.job.stop()
        }
    }

    pub fn main() -> Result<(), corral::Error> {
        // A "server" that forks workers, one of which detaches.
        let mut fixture = Fixture::start("sleep 1000 & sleep 1000 & setsid sleep 1000 & wait")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while fixture.members() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "fixture running ({}) with {} processes",
            fixture.running()?,
            fixture.members()
        );

        // ... the test body would talk to the server here ...

        let report = fixture.finish()?;
        println!(
            "fixture stopped: outcome {:?}, survivors {}",
            report.stop.map(|s| s.outcome),
            report.survivors.len()
        );

        // A fixture that is simply dropped (as on a panic) is killed and cleaned up too.
        let dropped = Fixture::start("sleep 1000 & wait")?;
        drop(dropped);
        println!("dropped fixture: gone");
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn main() -> Result<(), corral::Error> {
    imp::main()
}

/// The example uses Linux-only parts of the API (`members`, `wait_with_output`).
#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("test_harness: this example runs on Linux");
}
