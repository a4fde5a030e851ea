//! The client matrix: real drivers (psycopg 3, psycopg2, SQLAlchemy, pgjdbc,
//! psqlODBC, ADBC Flight SQL) run their probes in `tests/clients/` against a real
//! cluster with SCRAM passwords. `tests/clients/setup.sh` installs them (the README
//! test command runs it); a missing driver fails the test, it is never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tests::cluster::{Cluster, ClusterOptions, USER};

const PASSWORD: &str = "probe-pw";

/// The virtual environment `tests/clients/setup.sh` fills.
fn venv_python() -> Result<PathBuf> {
    let venv = std::env::var_os("FLOTILLA_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flotilla/venv")))
        .context("neither FLOTILLA_VENV nor HOME is set")?;
    let python = venv.join("bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run tests/clients/setup.sh (tests/run.sh does)",
            python.display()
        );
    }
    Ok(python)
}

fn clients_dir() -> PathBuf {
    tests::repo_root().join("tests/clients")
}

async fn cluster() -> Result<Cluster> {
    let cluster = Cluster::standalone(ClusterOptions {
        password: Some(PASSWORD.to_string()),
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    Ok(cluster)
}

/// Runs a probe with the connection settings in its environment, and checks it
/// ended with "N passed, 0 failed" for some N > 0.
fn run_probe(cluster: &Cluster, mut command: Command, name: &str) -> Result<()> {
    command
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.pg_port.to_string())
        .env("PGUSER", USER)
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", "flotilla")
        .env("PGCONNECT_TIMEOUT", "10")
        .env(
            "FLIGHT_URI",
            format!("grpc://127.0.0.1:{}", cluster.flight_port),
        )
        .env("FLIGHT_USER", USER)
        .env("FLIGHT_PASSWORD", PASSWORD)
        .env("TPCH_DIR", tests::shared_dir().join("tpch"))
        .current_dir(clients_dir());
    let output = command
        .output()
        .with_context(|| format!("starting the {name} probe"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, ") && l.ends_with(" failed"))
        .unwrap_or("");
    let counts: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let passed_cleanly = matches!(counts.as_slice(), [passed, 0] if *passed > 0);
    if !output.status.success() || !passed_cleanly {
        bail!(
            "{name} probe failed ({}; summary '{summary}')\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log (tail)\n{}",
            output.status,
            tail(&cluster.log_text(), 60)
        );
    }
    println!("{name}: {summary}");
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn python_probe(script: &str) -> Result<Command> {
    let mut command = Command::new(venv_python()?);
    command.arg(clients_dir().join(script));
    Ok(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() -> Result<()> {
    let cluster = cluster().await?;
    run_probe(&cluster, python_probe("psycopg3.py")?, "psycopg 3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2() -> Result<()> {
    let cluster = cluster().await?;
    run_probe(&cluster, python_probe("psycopg2_probe.py")?, "psycopg2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy() -> Result<()> {
    let cluster = cluster().await?;
    let mut command = python_probe("sqlalchemy_probe.py")?;
    command.args(["psycopg", "psycopg2"]);
    run_probe(&cluster, command, "SQLAlchemy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc() -> Result<()> {
    let jar = "/usr/share/java/postgresql.jar";
    if !std::path::Path::new(jar).exists() {
        bail!("{jar} is missing: run tests/clients/setup.sh (libpostgresql-jdbc-java)");
    }
    let build = tempfile::tempdir()?;
    let javac = Command::new("javac")
        .args(["-d"])
        .arg(build.path())
        .args(["-cp", jar])
        .arg(clients_dir().join("PgJdbc.java"))
        .output()
        .context("running javac (default-jdk-headless)")?;
    if !javac.status.success() {
        bail!("javac failed: {}", String::from_utf8_lossy(&javac.stderr));
    }
    let cluster = cluster().await?;
    let mut command = Command::new("java");
    command
        .arg("-cp")
        .arg(format!("{jar}:{}", build.path().display()))
        .arg("PgJdbc");
    run_probe(&cluster, command, "pgjdbc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psqlodbc() -> Result<()> {
    let cluster = cluster().await?;
    run_probe(&cluster, python_probe("odbc_probe.py")?, "psqlODBC")?;
    // The lower bar: the simple protocol only, as older Tableau/Excel set-ups use.
    let mut command = python_probe("odbc_probe.py")?;
    command.env("ODBC_EXTRA", "Protocol=7.4-1;UseServerSidePrepare=0");
    run_probe(&cluster, command, "psqlODBC (simple protocol)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_flight_sql() -> Result<()> {
    let cluster = cluster().await?;
    run_probe(&cluster, python_probe("adbc_probe.py")?, "ADBC Flight SQL")
}
