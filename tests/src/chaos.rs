//! The chaos scenarios: real `flotilla` processes killed, stopped, starved and
//! cancelled, each with its pass criterion checked. They run in two sizes from
//! the same code: [`Scale::ci`] in the test suite (`tests/integration/chaos.rs`,
//! correctness and no hang, generous bounds) and [`Scale::full`] from
//! `benches/src/bin/chaos.rs`, which prints the figures of
//! `../shared/docs/targets.md`'s reliability table.
//!
//! Every scenario returns a [`Report`] of figures; it fails (an `Err`) when a
//! result is wrong, an error is not the one expected, or something hangs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Action;
use futures::StreamExt;
use tokio_postgres::Client;

use crate::answers::{compare, read_answer, Rows};
use crate::cluster::{simple_rows, sqlstate, Cluster, ClusterOptions};

/// How big each scenario runs.
#[derive(Debug, Clone)]
pub struct Scale {
    /// TPC-H scale factor of the kill, cancel and slow-client scenarios.
    pub sf: f64,
    /// Repeats of each kill and cancel.
    pub repeats: usize,
    /// TPC-H scale factor of the spill scenario.
    pub spill_sf: f64,
    /// Each executor's memory pool in the spill scenario.
    pub pool_mib: usize,
    /// How long the slow client reads.
    pub slow_read: Duration,
}

impl Scale {
    /// What the test suite runs.
    pub fn ci() -> Self {
        Self {
            sf: 1.0,
            repeats: 5,
            spill_sf: 1.0,
            pool_mib: 128,
            slow_read: Duration::from_secs(10),
        }
    }

    /// What the chaos benchmark runs.
    pub fn full() -> Self {
        Self {
            sf: 1.0,
            repeats: 20,
            spill_sf: 10.0,
            pool_mib: 256,
            slow_read: Duration::from_secs(60),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
}

/// What a scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// Lines worth printing beside the figures.
    pub notes: Vec<String>,
}

impl Report {
    fn figure(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.figures.push(Figure {
            name: name.into(),
            value,
            unit,
        });
    }
}

/// One row of `flotilla.executors`.
#[derive(Debug, Clone)]
pub struct ExecutorRow {
    pub id: String,
    pub url: String,
    /// Where its control plane (stats, faults) answers.
    pub control_url: String,
    pub pid: i32,
    pub tasks_started: i64,
    pub tasks_running: i64,
    pub memory_reserved_bytes: i64,
    pub spill_bytes: i64,
}

/// The live executors, by id.
pub async fn executors(client: &Client) -> Result<Vec<ExecutorRow>> {
    let rows = simple_rows(
        client,
        "select executor_id, worker_url, pid, tasks_started, tasks_running, \
         memory_reserved_bytes, spill_bytes, control_url from flotilla.executors \
         order by executor_id",
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            let text = |i: usize| r[i].clone().ok_or_else(|| anyhow!("null column {i}"));
            let int = |i: usize| -> Result<i64> { Ok(text(i)?.parse()?) };
            Ok(ExecutorRow {
                id: text(0)?,
                url: text(1)?,
                pid: int(2)? as i32,
                tasks_started: int(3)?,
                tasks_running: int(4)?,
                memory_reserved_bytes: int(5)?,
                spill_bytes: int(6)?,
                control_url: text(7)?,
            })
        })
        .collect()
}

/// One row of `flotilla.queries`.
#[derive(Debug, Clone, Copy)]
pub struct QueriesRow {
    pub running: i64,
    pub queued: i64,
    pub running_peak: i64,
    pub rejected: i64,
    pub retried: i64,
}

pub async fn queries(client: &Client) -> Result<QueriesRow> {
    let rows = simple_rows(
        client,
        "select running, queued, running_peak, rejected, retried from flotilla.queries",
    )
    .await?;
    let row = rows.first().context("flotilla.queries has no row")?;
    let int = |i: usize| -> Result<i64> {
        Ok(row[i].as_deref().ok_or_else(|| anyhow!("null"))?.parse()?)
    };
    Ok(QueriesRow {
        running: int(0)?,
        queued: int(1)?,
        running_peak: int(2)?,
        rejected: int(3)?,
        retried: int(4)?,
    })
}

/// Sends a fault spec (JSON, see `flight::faults::FaultSpec`) to the executor
/// whose control plane is at `control_url`; `{}` clears every fault.
pub async fn inject_faults(control_url: &str, spec: serde_json::Value) -> Result<()> {
    let channel = tonic::transport::Channel::from_shared(control_url.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to {control_url}"))?;
    let mut client = FlightServiceClient::new(channel);
    let action = Action {
        r#type: "flotilla.faults".into(),
        body: serde_json::to_vec(&spec)?.into(),
    };
    let mut results = client.do_action(action).await?.into_inner();
    while results.message().await?.is_some() {}
    Ok(())
}

/// Waits until every executor runs no task and holds no pool memory; returns
/// how long that took.
pub async fn wait_idle(client: &Client, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let rows = executors(client).await?;
        if rows
            .iter()
            .all(|e| e.tasks_running == 0 && e.memory_reserved_bytes == 0)
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("executors still busy after {timeout:?}: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU time a process has used, from `/proc/PID/stat`.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / per_second))
}

/// Waits until none of `pids` uses CPU for 200 ms in a row; returns how long
/// that took from now.
pub async fn wait_cpu_idle(pids: &[i32], timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let total = || -> Duration { pids.iter().filter_map(|p| cpu_time(*p)).sum() };
    let mut last = total();
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = total();
        // Ticks are 10 ms: less than two of them in 50 ms is idle.
        if now.saturating_sub(last) > Duration::from_millis(10) {
            quiet_since = Instant::now();
        }
        last = now;
        if quiet_since.elapsed() >= Duration::from_millis(200) {
            return Ok(quiet_since.duration_since(started));
        }
        if started.elapsed() > timeout {
            bail!("executors {pids:?} still use CPU after {timeout:?}");
        }
    }
}

/// A database error as the server wrote it: SQLSTATE and message.
fn db_text(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process this test started; at worst it is gone.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The text of TPC-H query `n`.
pub fn tpch_query(n: usize) -> Result<String> {
    let path = crate::shared_dir()
        .join("tpch/queries")
        .join(format!("q{n:02}.sql"));
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(text.trim().trim_end_matches(';').to_string())
}

/// The reference answer of TPC-H query `n` at `sf`.
pub fn tpch_answer(sf: f64, n: usize) -> Result<Rows> {
    let path = crate::shared_dir()
        .join("tpch/answers")
        .join(format!("sf{sf}"))
        .join(format!("q{n:02}.csv"));
    Ok(read_answer(&path)?.1)
}

fn cluster(executors: usize, sf: f64, config: Option<String>) -> Result<Cluster> {
    Cluster::standalone(ClusterOptions {
        executors,
        tpch: Some(sf),
        config,
        restart: true,
        fault_injection: true,
        ..ClusterOptions::default()
    })
}

/// Runs a query on its own connection in the background.
fn spawn_query(cluster: &Cluster, sql: String) -> tokio::task::JoinHandle<Result<Rows>> {
    let port = cluster.pg_port;
    tokio::spawn(async move {
        let client = crate::cluster::connect(port).await?;
        // No scenario's query may run for ever.
        client
            .simple_query("SET statement_timeout = '300s'")
            .await?;
        simple_rows(&client, &sql).await
    })
}

/// Kills (`SIGKILL`) up to `count` executors once one of them runs a task of
/// the query in flight; returns the pids killed (none if the query ended first).
async fn kill_when_busy(
    client: &Client,
    count: usize,
    query: &tokio::task::JoinHandle<Result<Rows>>,
    pick: usize,
) -> Result<Vec<i32>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !query.is_finished() && Instant::now() < deadline {
        let rows = executors(client).await?;
        if rows.iter().any(|e| e.tasks_running > 0) {
            let n = rows.len();
            let victims: Vec<i32> = (0..count.min(n))
                .map(|i| rows[(pick + i) % n].pid)
                .collect();
            for pid in &victims {
                kill(*pid, libc::SIGKILL);
            }
            return Ok(victims);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Vec::new())
}

/// Scenario 1: `kill -9` one of three executors mid-query (TPC-H Q9, Q18): the
/// answer is right, the client sees no error; time against a clean run.
pub async fn kill_one_executor(scale: &Scale) -> Result<Report> {
    let cluster = cluster(3, scale.sf, None)?;
    cluster.wait_executors(3, Duration::from_secs(60)).await?;
    let watcher = cluster.client().await?;
    let mut report = Report::default();
    for q in [9, 18] {
        let sql = tpch_query(q)?;
        let answer = tpch_answer(scale.sf, q)?;
        let started = Instant::now();
        let rows = simple_rows(&watcher, &sql).await?;
        let clean = started.elapsed();
        compare(&answer, &rows).with_context(|| format!("q{q} clean run"))?;
        let mut worst = Duration::ZERO;
        let mut killed_runs = 0;
        for repeat in 0..scale.repeats {
            cluster.wait_executors(3, Duration::from_secs(60)).await?;
            let started = Instant::now();
            let query = spawn_query(&cluster, sql.clone());
            let victims = kill_when_busy(&watcher, 1, &query, repeat).await?;
            let rows = tokio::time::timeout(Duration::from_secs(120), query)
                .await
                .with_context(|| format!("q{q} hung after an executor was killed"))???;
            let took = started.elapsed();
            compare(&answer, &rows)
                .with_context(|| format!("q{q} answer after killing {victims:?}"))?;
            if !victims.is_empty() {
                killed_runs += 1;
                worst = worst.max(took);
            }
        }
        ensure!(
            killed_runs > 0,
            "q{q}: the query always ended before an executor could be killed"
        );
        report.figure(format!("q{q:02} clean run"), clean.as_secs_f64(), "s");
        report.figure(
            format!("q{q:02} slowest run with an executor killed ({killed_runs} runs)"),
            worst.as_secs_f64(),
            "s",
        );
        report.figure(
            format!("q{q:02} extra time over a clean run, worst"),
            (worst.saturating_sub(clean)).as_secs_f64(),
            "s",
        );
    }
    Ok(report)
}

/// Scenario 2: every executor killed mid-query. Within 60 s the query either
/// fails with an error naming executor loss or (executors restarted) answers
/// right; the next query succeeds.
pub async fn kill_all_executors(scale: &Scale) -> Result<Report> {
    let cluster = cluster(3, scale.sf, None)?;
    cluster.wait_executors(3, Duration::from_secs(60)).await?;
    let watcher = cluster.client().await?;
    let sql = tpch_query(18)?;
    let answer = tpch_answer(scale.sf, 18)?;
    let (mut completed, mut failed) = (0, 0);
    let mut slowest = Duration::ZERO;
    for _ in 0..scale.repeats {
        cluster.wait_executors(3, Duration::from_secs(60)).await?;
        let started = Instant::now();
        let query = spawn_query(&cluster, sql.clone());
        let victims = kill_when_busy(&watcher, 3, &query, 0).await?;
        let outcome = tokio::time::timeout(Duration::from_secs(60), query)
            .await
            .context("a query hung after every executor was killed")??;
        slowest = slowest.max(started.elapsed());
        match outcome {
            Ok(rows) => {
                compare(&answer, &rows).context("answer after every executor was killed")?;
                completed += 1;
            }
            Err(error) => {
                let pg = error
                    .downcast_ref::<tokio_postgres::Error>()
                    .with_context(|| format!("not a database error: {error:#}"))?;
                let state = sqlstate(pg);
                let text = db_text(pg);
                ensure!(
                    state.as_deref() == Some("57P03"),
                    "killing {victims:?} gave {text}"
                );
                ensure!(
                    text.contains("executor"),
                    "the error does not name executor loss: {text}"
                );
                failed += 1;
            }
        }
        cluster.wait_executors(3, Duration::from_secs(60)).await?;
        let rows = simple_rows(&watcher, &tpch_query(6)?).await?;
        compare(&tpch_answer(scale.sf, 6)?, &rows).context("the next query")?;
    }
    let mut report = Report::default();
    report.figure(
        "runs answered right after losing every executor",
        completed as f64,
        "",
    );
    report.figure("runs failed with executor loss (57P03)", failed as f64, "");
    report.figure("slowest outcome", slowest.as_secs_f64(), "s");
    drop(cluster);

    // Without restarts the query fails within the detection time (the
    // executor timeout, 3 s) with an error naming executor loss.
    let cluster = Cluster::standalone(ClusterOptions {
        executors: 2,
        tpch: Some(scale.sf),
        restart: false,
        fault_injection: true,
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let watcher = cluster.client().await?;
    let query = spawn_query(&cluster, sql.clone());
    let victims = kill_when_busy(&watcher, 2, &query, 0).await?;
    ensure!(
        !victims.is_empty(),
        "the query ended before its executors could be killed"
    );
    let killed_at = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(60), query)
        .await
        .context("a query hung after every executor was killed for good")??;
    let error = outcome
        .err()
        .context("a query succeeded with every executor dead")?;
    let pg = error
        .downcast_ref::<tokio_postgres::Error>()
        .with_context(|| format!("not a database error: {error:#}"))?;
    let text = db_text(pg);
    ensure!(
        text.starts_with("57P03") && text.contains("executor"),
        "not an error naming executor loss: {text}"
    );
    let took = killed_at.elapsed();
    ensure!(
        took < Duration::from_secs(3 + 10),
        "the error took {took:?} (detection time 3 s)"
    );
    report.figure(
        "no restarts: error naming executor loss after",
        took.as_secs_f64(),
        "s",
    );
    Ok(report)
}

/// Scenario 3: a killed executor is restarted and registers again within the
/// detection time + 10 s; the dead one is never scheduled again.
pub async fn restart_reregisters(_scale: &Scale) -> Result<Report> {
    let cluster = cluster(3, 0.1, None)?;
    cluster.wait_executors(3, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let before = executors(&client).await?;
    let victim = before[0].clone();
    let started = Instant::now();
    kill(victim.pid, libc::SIGKILL);
    let deadline = Duration::from_secs(3 + 10);
    let back = loop {
        let rows = executors(&client).await?;
        if let Some(new) = rows
            .iter()
            .find(|e| e.id == victim.id && e.pid != victim.pid)
        {
            break new.clone();
        }
        ensure!(
            started.elapsed() < deadline,
            "{} did not register again within {deadline:?}",
            victim.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reregistered = started.elapsed();
    let rows = executors(&client).await?;
    ensure!(
        rows.iter()
            .all(|e| e.url != victim.url || e.pid != victim.pid),
        "the dead executor is still listed: {rows:?}"
    );
    let answer = tpch_answer(0.1, 1)?;
    compare(&answer, &simple_rows(&client, &tpch_query(1)?).await?)?;
    let after = executors(&client).await?;
    let newcomer = after
        .iter()
        .find(|e| e.pid == back.pid)
        .context("the restarted executor left")?;
    ensure!(
        newcomer.tasks_started > back.tasks_started,
        "the restarted executor got no work: {after:?}"
    );
    let mut report = Report::default();
    report.figure(
        "killed executor registered again after",
        reregistered.as_secs_f64(),
        "s",
    );
    Ok(report)
}

/// Scenario 4: a task that fails transiently once succeeds after one retry; one
/// that always fails fails after the retry budget with the original error.
pub async fn transient_and_permanent_failures(_scale: &Scale) -> Result<Report> {
    let cluster = cluster(3, 0.1, None)?;
    cluster.wait_executors(3, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let target = executors(&client).await?[0].control_url.clone();
    let sql = tpch_query(1)?;
    let answer = tpch_answer(0.1, 1)?;
    let mut report = Report::default();

    let before = queries(&client).await?.retried;
    inject_faults(&target, serde_json::json!({ "fail_tasks": 1 })).await?;
    let started = Instant::now();
    compare(&answer, &simple_rows(&client, &sql).await?).context("after a transient failure")?;
    let once = queries(&client).await?.retried - before;
    ensure!(once == 1, "a transient failure took {once} retries, not 1");
    report.figure(
        "transient failure: time with 1 retry",
        started.elapsed().as_secs_f64(),
        "s",
    );

    let before = queries(&client).await?.retried;
    inject_faults(&target, serde_json::json!({ "fail_always": true })).await?;
    let started = Instant::now();
    let error = simple_rows(&client, &sql)
        .await
        .err()
        .context("a task that always fails did not fail the query")?;
    let pg = error
        .downcast_ref::<tokio_postgres::Error>()
        .context("not a database error")?;
    let text = db_text(pg);
    ensure!(
        sqlstate(pg).as_deref() == Some("57P03") && text.contains("injected fault"),
        "not the original error: {text}"
    );
    let retries = queries(&client).await?.retried - before;
    ensure!(retries == 2, "{retries} retries, not the budget of 2");
    report.figure(
        "permanent failure: reported after",
        started.elapsed().as_secs_f64(),
        "s",
    );
    inject_faults(&target, serde_json::json!({})).await?;
    compare(&answer, &simple_rows(&client, &sql).await?).context("after clearing the fault")?;
    Ok(report)
}

/// Scenario 5: user errors are answered at once with their SQLSTATE, never
/// retried; executors stay up and the connection stays usable.
pub async fn user_errors_are_not_retried(_scale: &Scale) -> Result<Report> {
    let cluster = cluster(2, 0.1, None)?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let pids: Vec<i32> = executors(&client).await?.iter().map(|e| e.pid).collect();
    let before = queries(&client).await?.retried;
    let cases = [
        (
            "select sum(l_quantity / (l_linenumber - l_linenumber)) from lineitem",
            "22012",
        ),
        ("selec count(*) from lineitem", "42601"),
        ("select count(*) from no_such_table", "42P01"),
        ("select max(fault_panic(l_comment)) from lineitem", "XX000"),
        ("select fault_panic('on the coordinator')", "XX000"),
    ];
    let mut report = Report::default();
    for (sql, expected) in cases {
        let started = Instant::now();
        let error = simple_rows(&client, sql)
            .await
            .err()
            .with_context(|| format!("{sql} did not fail"))?;
        let pg = error
            .downcast_ref::<tokio_postgres::Error>()
            .with_context(|| format!("{sql}: not a database error: {error:#}"))?;
        ensure!(
            sqlstate(pg).as_deref() == Some(expected),
            "{sql}: not {expected}: {}",
            db_text(pg)
        );
        report.figure(
            format!("{expected} answered after"),
            started.elapsed().as_secs_f64(),
            "s",
        );
        let one = simple_rows(&client, "select 1").await?;
        ensure!(
            one == vec![vec![Some("1".to_string())]],
            "the connection broke after {sql}"
        );
    }
    let retried = queries(&client).await?.retried - before;
    ensure!(retried == 0, "user errors were retried {retried} times");
    let after: Vec<i32> = executors(&client).await?.iter().map(|e| e.pid).collect();
    ensure!(after == pids, "executors restarted: {pids:?} -> {after:?}");
    compare(
        &tpch_answer(0.1, 6)?,
        &simple_rows(&client, &tpch_query(6)?).await?,
    )?;
    Ok(report)
}

/// Scenario 6: exchange requests delayed below the exchange timeout cost time
/// only; one left unanswered is classified, the query recovers, the answer is
/// right.
pub async fn exchange_delayed_or_dropped(_scale: &Scale) -> Result<Report> {
    let timeout = Duration::from_secs(2);
    // The extra configuration follows the test clusters' own `[query]` table.
    let config = format!(
        "stall_timeout = \"3s\"\n[coordinator]\nexchange_timeout = \"{}s\"\n",
        timeout.as_secs()
    );
    let cluster = cluster(2, 0.1, Some(config))?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let rows = executors(&client).await?;
    let sql = tpch_query(3)?;
    let answer = tpch_answer(0.1, 3)?;
    let mut report = Report::default();

    let started = Instant::now();
    compare(&answer, &simple_rows(&client, &sql).await?)?;
    report.figure("q03 clean", started.elapsed().as_secs_f64(), "s");

    let before = queries(&client).await?.retried;
    for e in &rows {
        inject_faults(&e.control_url, serde_json::json!({ "exchange_delay": 500 })).await?;
    }
    let started = Instant::now();
    compare(&answer, &simple_rows(&client, &sql).await?).context("with delayed exchanges")?;
    report.figure(
        "q03 with every exchange request delayed 0.5 s",
        started.elapsed().as_secs_f64(),
        "s",
    );
    ensure!(
        queries(&client).await?.retried == before,
        "a delay below the exchange timeout caused a retry"
    );

    for e in &rows {
        inject_faults(&e.control_url, serde_json::json!({})).await?;
    }
    inject_faults(
        &rows[0].control_url,
        serde_json::json!({ "exchange_drops": 1 }),
    )
    .await?;
    let started = Instant::now();
    compare(&answer, &simple_rows(&client, &sql).await?).context("with a dropped exchange")?;
    let retried = queries(&client).await?.retried - before;
    ensure!(retried >= 1, "a dropped exchange request was not retried");
    report.figure(
        "q03 with one exchange request dropped (timeout 2 s)",
        started.elapsed().as_secs_f64(),
        "s",
    );

    // A task whose data stops coming mid-stream (the request was answered;
    // the rows never arrive): the stall watchdog (3 s here) notices that the
    // executors do nothing, and the query runs again.
    inject_faults(
        &rows[1].control_url,
        serde_json::json!({ "stall_tasks": 1 }),
    )
    .await?;
    let started = Instant::now();
    compare(&answer, &simple_rows(&client, &sql).await?).context("with a stalled task")?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(30),
        "a stalled task took {took:?} to get past"
    );
    report.figure(
        "q03 with one task stalled (stall timeout 3 s)",
        took.as_secs_f64(),
        "s",
    );
    Ok(report)
}

/// Scenario 7: executors with a small memory pool answer TPC-H Q18 and Q21
/// right by spilling; a sort too big for the pool spills and ends right; an
/// operator that cannot spill fails with resources exhausted and no executor
/// dies; no spill file is left behind.
pub async fn spill_under_a_small_pool(scale: &Scale) -> Result<Report> {
    let spill_dir = tempfile::Builder::new()
        .prefix("flotilla-spill-")
        .tempdir()?;
    let config = format!(
        "[executor]\nmemory_limit_bytes = {}\nspill_dir = \"{}\"\n",
        scale.pool_mib << 20,
        spill_dir.path().display()
    );
    let cluster = cluster(2, scale.spill_sf, Some(config))?;
    cluster.wait_executors(2, Duration::from_secs(120)).await?;
    let client = cluster.client().await?;
    let pids: Vec<i32> = executors(&client).await?.iter().map(|e| e.pid).collect();
    let mut report = Report::default();
    let mut checks: Vec<(String, String, Option<Rows>)> = Vec::new();
    let data = cluster
        .data_dir
        .join("tpch")
        .join(format!("sf{}", scale.spill_sf));
    for q in [18, 21] {
        let sql = tpch_query(q)?;
        // Reference answers exist at SF0.1 and SF1; elsewhere single-process
        // DataFusion on the same files gives it.
        let answer = match tpch_answer(scale.spill_sf, q) {
            Ok(answer) => answer,
            Err(_) => reference_rows(&data, &sql).await?,
        };
        checks.push((format!("q{q:02}"), sql, Some(answer)));
    }
    checks.push((
        "one sort of two million comments".into(),
        spilling_sort(scale.spill_sf).into(),
        None,
    ));
    for (name, sql, answer) in checks {
        let (rows, peak_spill, took) = run_watching_spill(&cluster, &client, &sql).await?;
        if let Some(answer) = answer {
            compare(&answer, &rows).with_context(|| format!("{name} under a small pool"))?;
        } else if name.starts_with("one sort") {
            let count = rows[0][0].clone();
            ensure!(
                count.is_some() && count == rows[0][1],
                "{name}: row_number does not reach the count: {rows:?}"
            );
            ensure!(peak_spill > 0, "{name} did not spill");
        }
        report.figure(format!("{name}: time"), took.as_secs_f64(), "s");
        report.figure(
            format!("{name}: most spill bytes on disk at once"),
            peak_spill as f64 / 1048576.0,
            "MiB",
        );
        wait_idle(&client, Duration::from_secs(10)).await?;
        let left = spill_files(spill_dir.path())?;
        ensure!(left.is_empty(), "{name} left spill files: {left:?}");
    }
    for pid in &pids {
        if let Some((_, peak)) = crate::memory_mib(*pid as u32) {
            report.figure(format!("executor {pid} peak resident memory"), peak, "MiB");
        }
    }
    // A cross join holds its whole build side (here all of lineitem's
    // comments, more than the pool) in memory: it cannot spill.
    let unspillable = "select max(a.l_comment || b.l_comment) from lineitem a, lineitem b";
    // Should it ever fit, it must not run for ever.
    client
        .simple_query("SET statement_timeout = '120s'")
        .await?;
    let error = match simple_rows(&client, unspillable).await {
        Ok(rows) => bail!("an operator that cannot spill fit in the pool: {rows:?}"),
        Err(error) => error,
    };
    let pg = error
        .downcast_ref::<tokio_postgres::Error>()
        .context("not a database error")?;
    ensure!(
        sqlstate(pg).as_deref() == Some("53200"),
        "not resources exhausted: {}",
        db_text(pg)
    );
    let after: Vec<i32> = executors(&client).await?.iter().map(|e| e.pid).collect();
    ensure!(after == pids, "an executor died: {pids:?} -> {after:?}");
    drop(cluster);

    // The spill directory's cap: the same sort with 8 MiB of spill space
    // fails with resources exhausted, and leaves nothing behind.
    let config = format!(
        "[executor]\nmemory_limit_bytes = {}\nspill_dir = \"{}\"\nspill_bytes_max = {}\n",
        scale.pool_mib << 20,
        spill_dir.path().display(),
        8 << 20
    );
    let capped = self::cluster(2, scale.spill_sf, Some(config))?;
    capped.wait_executors(2, Duration::from_secs(120)).await?;
    let client = capped.client().await?;
    let error = match simple_rows(&client, spilling_sort(scale.spill_sf)).await {
        Ok(rows) => bail!("a sort spilled past the spill cap: {rows:?}"),
        Err(error) => error,
    };
    let pg = error
        .downcast_ref::<tokio_postgres::Error>()
        .context("not a database error")?;
    ensure!(
        sqlstate(pg).as_deref() == Some("53200"),
        "the spill cap gave {}",
        db_text(pg)
    );
    wait_idle(&client, Duration::from_secs(10)).await?;
    let left = spill_files(spill_dir.path())?;
    ensure!(
        left.is_empty(),
        "the capped sort left spill files: {left:?}"
    );
    Ok(report)
}

/// One sort of every comment of a table of about two million rows (orders at
/// SF1, part at SF10), in one stream: more than a small pool holds, less than
/// a sort's unspillable merge phase needs there.
fn spilling_sort(sf: f64) -> &'static str {
    if sf >= 10.0 {
        "select count(*), max(rn) from (select row_number() over \
         (order by p_comment, p_partkey) as rn from part) as t"
    } else {
        "select count(*), max(rn) from (select row_number() over \
         (order by o_comment, o_orderkey) as rn from orders) as t"
    }
}

/// Single-process DataFusion (2 partitions, with Flotilla's planning rules)
/// over the TPC-H tables in `data`: the same semantics, no distribution.
pub async fn reference_context(
    data: &std::path::Path,
) -> Result<datafusion::prelude::SessionContext> {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::new().with_target_partitions(2))
        .with_default_features()
        .with_analyzer_rule(std::sync::Arc::new(sql::rules::WidenDecimalAvgRule))
        .build();
    let ctx = SessionContext::new_with_state(state);
    for table in [
        "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
    ] {
        let location = format!("{}/", data.join(table).display());
        ctx.register_parquet(table, &location, ParquetReadOptions::default())
            .await?;
    }
    Ok(ctx)
}

/// The answer of single-process DataFusion ([`reference_context`]) over the
/// TPC-H tables in `data`.
pub async fn reference_rows(data: &std::path::Path, sql: &str) -> Result<Rows> {
    let ctx = reference_context(data).await?;
    crate::answers::batch_rows(&ctx.sql(sql).await?.collect().await?)
}

/// Runs `sql`, polling the executors' spill bytes meanwhile; returns the rows,
/// the most spill bytes seen and the time.
async fn run_watching_spill(
    cluster: &Cluster,
    client: &Client,
    sql: &str,
) -> Result<(Rows, i64, Duration)> {
    let started = Instant::now();
    let query = spawn_query(cluster, sql.to_string());
    let mut peak = 0;
    while !query.is_finished() {
        let rows = executors(client).await?;
        peak = peak.max(rows.iter().map(|e| e.spill_bytes).sum());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = query.await??;
    Ok((rows, peak, started.elapsed()))
}

fn spill_files(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    Ok(files)
}

/// Scenario 8: at most 4 running and 8 queued; of 20 submitted at once, 8 are
/// refused at once with 53300 and never more than 4 run.
pub async fn admission_limits(_scale: &Scale) -> Result<Report> {
    let config = "[admission]\nrunning_max = 4\nqueued_max = 8\n".to_string();
    let cluster = cluster(2, 0.1, Some(config))?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let watcher = cluster.client().await?;
    // Slow enough that none ends before all twenty are in.
    let sql = "select count(*) from lineitem a join lineitem b on a.l_partkey = b.l_partkey";
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(cluster.client().await?);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        tasks.spawn(async move {
            let result = client.simple_query(sql).await;
            (result.map(|_| ()), Instant::now())
        });
    }
    let (mut ok, mut refused, mut slowest_refusal) = (0, 0, Duration::ZERO);
    while let Some(joined) = tasks.join_next().await {
        let (result, at) = joined?;
        match result {
            Ok(()) => ok += 1,
            Err(error) => {
                ensure!(
                    sqlstate(&error).as_deref() == Some("53300"),
                    "not 53300: {}",
                    db_text(&error)
                );
                refused += 1;
                slowest_refusal = slowest_refusal.max(at.duration_since(started));
            }
        }
    }
    let counts = queries(&watcher).await?;
    ensure!(
        counts.running_peak <= 4,
        "{} queries ran at once",
        counts.running_peak
    );
    ensure!(
        refused == 8 && ok == 12,
        "{ok} answered and {refused} refused, not 12 and 8"
    );
    ensure!(
        counts.running == 0 && counts.queued == 0,
        "slots leaked: {counts:?}"
    );
    let mut report = Report::default();
    report.figure(
        "most queries running at once",
        counts.running_peak as f64,
        "",
    );
    report.figure("refused of 20", refused as f64, "");
    report.figure("slowest refusal", slowest_refusal.as_secs_f64() * 1e3, "ms");
    Ok(report)
}

/// The cooperative long query the cancel scenarios stop: a join whose output
/// is counted (a hash join probes batch by batch, so it stops promptly).
const LONG_QUERY: &str =
    "select count(*) from lineitem a join lineitem b on a.l_partkey = b.l_partkey";

/// Scenario 9: pgwire CancelRequest, Flight SQL CancelFlightInfo, a client
/// that disconnects, and `statement_timeout`: the client gets 57014 /
/// CANCELLED at once, and the executors go idle with their memory released.
pub async fn cancellation(scale: &Scale) -> Result<Report> {
    let cluster = cluster(2, scale.sf, None)?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let watcher = cluster.client().await?;
    let pids: Vec<i32> = executors(&watcher).await?.iter().map(|e| e.pid).collect();
    let mut report = Report::default();
    for path in [
        "pgwire CancelRequest",
        "Flight SQL CancelFlightInfo",
        "client disconnect",
        "statement_timeout",
    ] {
        let mut answer_latency = Vec::new();
        let mut idle_latency = Vec::new();
        for _ in 0..scale.repeats {
            wait_idle(&watcher, Duration::from_secs(30)).await?;
            let (cancelled_at, answered) = match path {
                "pgwire CancelRequest" => cancel_pgwire(&cluster).await?,
                "Flight SQL CancelFlightInfo" => cancel_flight(&cluster).await?,
                "client disconnect" => disconnect(&cluster).await?,
                _ => statement_timeout(&cluster).await?,
            };
            if let Some(answered) = answered {
                answer_latency.push(answered.duration_since(cancelled_at));
            }
            let waiting = Instant::now();
            let quiet = wait_cpu_idle(&pids, Duration::from_secs(30)).await?;
            idle_latency.push(waiting.duration_since(cancelled_at) + quiet);
            // And nothing is left running or reserved.
            wait_idle(&watcher, Duration::from_secs(10)).await?;
        }
        if !answer_latency.is_empty() {
            report.figure(
                format!("{path}: cancelled answer, p99 of {}", answer_latency.len()),
                percentile(&mut answer_latency, 0.99).as_secs_f64() * 1e3,
                "ms",
            );
        }
        report.figure(
            format!("{path}: executors' CPU idle, p99 of {}", idle_latency.len()),
            percentile(&mut idle_latency, 0.99).as_secs_f64() * 1e3,
            "ms",
        );
    }
    Ok(report)
}

fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// Returns (when the cancel was sent, when the client got its error).
async fn cancel_pgwire(cluster: &Cluster) -> Result<(Instant, Option<Instant>)> {
    let client = cluster.client().await?;
    let token = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query(LONG_QUERY).await.map(|_| ()) });
    busy_executors(cluster).await?;
    let cancelled_at = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await?;
    let result = tokio::time::timeout(Duration::from_secs(30), query)
        .await
        .context("the cancelled query did not end")??;
    let answered = Instant::now();
    let error = result.err().context("the cancelled query succeeded")?;
    ensure!(
        sqlstate(&error).as_deref() == Some("57014"),
        "not 57014: {}",
        db_text(&error)
    );
    Ok((cancelled_at, Some(answered)))
}

async fn busy_executors(cluster: &Cluster) -> Result<()> {
    let client = cluster.client().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !executors(&client)
        .await?
        .iter()
        .any(|e| e.tasks_running > 0)
    {
        ensure!(
            Instant::now() < deadline,
            "the query never reached an executor"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

async fn cancel_flight(cluster: &Cluster) -> Result<(Instant, Option<Instant>)> {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    let channel = tonic::transport::Channel::from_shared(format!(
        "http://127.0.0.1:{}",
        cluster.flight_port
    ))?
    .connect()
    .await?;
    let mut flight = FlightSqlServiceClient::new(channel);
    flight.handshake("flotilla", "").await?;
    let info = flight.execute(LONG_QUERY.to_string(), None).await?;
    let ticket = info.endpoint[0].ticket.clone().context("no ticket")?;
    let mut reader = flight.clone();
    let fetch = tokio::spawn(async move {
        let mut stream = reader.do_get(ticket).await?;
        while let Some(batch) = stream.next().await {
            batch?;
        }
        Ok::<_, arrow_flight::error::FlightError>(())
    });
    busy_executors(cluster).await?;
    let cancelled_at = Instant::now();
    let request = arrow_flight::CancelFlightInfoRequest { info: Some(info) };
    let mut results = flight
        .do_action(Action {
            r#type: "CancelFlightInfo".into(),
            body: prost::Message::encode_to_vec(&request).into(),
        })
        .await?;
    while results.message().await?.is_some() {}
    let result = tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .context("the cancelled fetch did not end")??;
    let answered = Instant::now();
    match result {
        Err(arrow_flight::error::FlightError::Tonic(status))
            if status.code() == tonic::Code::Cancelled => {}
        other => bail!("the cancelled fetch ended with {other:?}, not CANCELLED"),
    }
    Ok((cancelled_at, Some(answered)))
}

async fn disconnect(cluster: &Cluster) -> Result<(Instant, Option<Instant>)> {
    let mut raw = crate::pgraw::RawConnection::connect(cluster.pg_port).await?;
    raw.send_query(LONG_QUERY).await?;
    busy_executors(cluster).await?;
    let cancelled_at = Instant::now();
    // The socket closes: the coordinator drops the query.
    drop(raw);
    Ok((cancelled_at, None))
}

async fn statement_timeout(cluster: &Cluster) -> Result<(Instant, Option<Instant>)> {
    let client = cluster.client().await?;
    client.simple_query("SET statement_timeout = '2s'").await?;
    let started = Instant::now();
    let error = client
        .simple_query(LONG_QUERY)
        .await
        .err()
        .context("the query outlived its statement timeout")?;
    let answered = Instant::now();
    ensure!(
        sqlstate(&error).as_deref() == Some("57014"),
        "not 57014: {}",
        db_text(&error)
    );
    Ok((started + Duration::from_secs(2), Some(answered)))
}

/// Scenario 10: a client reading a big result at 1 MB/s: its first row comes
/// at once, and the coordinator's and executors' memory stays flat.
pub async fn slow_client(scale: &Scale) -> Result<Report> {
    let cluster = cluster(2, scale.sf, None)?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let watcher = cluster.client().await?;
    let pids: Vec<i32> = executors(&watcher).await?.iter().map(|e| e.pid).collect();
    // Every lineitem row once per nation: 150 M rows at SF1.
    let sql = "select l_orderkey, l_comment, n_name from lineitem, nation";
    let mut raw = crate::pgraw::RawConnection::connect(cluster.pg_port).await?;
    let rss = |pid: u32| crate::memory_mib(pid).map(|m| m.0).unwrap_or(0.0);
    let sample = || -> Vec<(String, f64)> {
        std::iter::once(("coordinator".to_string(), rss(cluster.pid())))
            .chain(
                pids.iter()
                    .map(|p| (format!("executor {p}"), rss(*p as u32))),
            )
            .collect()
    };
    raw.send_query(sql).await?;
    let first = raw.read_slowly(1 << 20, Duration::from_secs(3)).await?;
    let early = sample();
    let rest = raw.read_slowly(1 << 20, scale.slow_read).await?;
    let late = sample();
    ensure!(!rest.ended, "the answer ended: the slow read was not slow");
    drop(raw);
    let first_row = first.first_row.context("no row arrived")?;
    ensure!(
        first_row < Duration::from_secs(10),
        "the first row took {first_row:?}"
    );
    let mut report = Report::default();
    report.figure("first row after", first_row.as_secs_f64(), "s");
    report.figure(
        "bytes read at 1 MB/s",
        (first.bytes + rest.bytes) as f64 / 1048576.0,
        "MiB",
    );
    for ((label, before), (_, after)) in early.iter().zip(&late) {
        report.figure(
            format!("{label}: resident memory after 3 s"),
            *before,
            "MiB",
        );
        report.figure(
            format!("{label}: growth over the next {:?}", scale.slow_read),
            after - before,
            "MiB",
        );
        ensure!(
            after - before < 100.0,
            "{label}: memory grew from {before:.0} to {after:.0} MiB under a slow client"
        );
    }
    let idle = wait_idle(&watcher, Duration::from_secs(30)).await?;
    report.figure(
        "executors idle after the client left",
        idle.as_secs_f64(),
        "s",
    );
    Ok(report)
}
