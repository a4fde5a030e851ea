//! The chaos suite at CI size (`tests::chaos::Scale::ci`): real processes
//! killed, faults injected, memory starved, queries cancelled. Each test checks
//! its scenario's pass criterion for correctness and no hang; the full-size
//! figures come from `benches/src/bin/chaos.rs`.

use anyhow::Result;
use tests::chaos::{self, Report, Scale};

fn print(scenario: &str, report: &Report) {
    for figure in &report.figures {
        println!(
            "{scenario}: {} = {:.3} {}",
            figure.name, figure.value, figure.unit
        );
    }
}

macro_rules! scenario {
    ($name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<()> {
            let report = chaos::$name(&Scale::ci()).await?;
            print(stringify!($name), &report);
            Ok(())
        }
    };
}

scenario!(kill_one_executor);
scenario!(kill_all_executors);
scenario!(restart_reregisters);
scenario!(transient_and_permanent_failures);
scenario!(user_errors_are_not_retried);
scenario!(exchange_delayed_or_dropped);
scenario!(spill_under_a_small_pool);
scenario!(admission_limits);
scenario!(cancellation);
scenario!(slow_client);
