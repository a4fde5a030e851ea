//! The docker-compose cluster (`docker-compose.yml`, `Dockerfile`): built on a
//! base image made here (`tests/compose/base-image.sh`, since this machine's
//! Docker engine cannot pull) with the binary under test, brought up, queried
//! through psql, one executor container stopped mid-query, the answer checked,
//! and torn down.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tests::answers::{compare, Rows};
use tests::chaos::{tpch_answer, tpch_query};

/// `docker-compose` (Debian's) or `docker compose`.
fn compose_command() -> Result<Vec<String>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("docker-compose", &["version"]) {
        return Ok(vec!["docker-compose".into()]);
    }
    if works("docker", &["compose", "version"]) {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    bail!("neither docker-compose nor docker compose is installed")
}

fn checked(output: Output, what: &str) -> Result<Output> {
    ensure!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// One compose project; `down -v` (containers, network, volume, image) on drop.
struct Project {
    compose: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
    image: String,
}

impl Project {
    fn run(&self, args: &[&str]) -> Result<Output> {
        let file = tests::repo_root().join("docker-compose.yml");
        let mut command = Command::new(&self.compose[0]);
        command
            .args(&self.compose[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        checked(
            command
                .output()
                .with_context(|| format!("running {:?}", self.compose))?,
            &format!("compose {}", args.join(" ")),
        )
    }

    fn logs(&self) -> String {
        self.run(&["logs", "--no-color", "--tail", "40"])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--timeout", "5"]);
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Rows of `sql` through psql (unaligned, `|` between fields, `NULL` for null).
fn psql(port: u16, sql: &str) -> Result<Rows> {
    let output = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "flotilla"])
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            "|",
            "-P",
            "null=NULL",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    let output = checked(output, "psql")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            line.split('|')
                .map(|v| (v != "NULL").then(|| v.to_string()))
                .collect()
        })
        .collect())
}

fn copy_into(dir: &Path, from: &Path, name: &str) -> Result<()> {
    let target = dir.join(name);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, &target)
        .with_context(|| format!("copying {} into the build context", from.display()))?;
    Ok(())
}

#[test]
fn compose_cluster_answers_through_a_stopped_executor() -> Result<()> {
    let compose = compose_command()?;
    let base = checked(
        Command::new("bash")
            .arg(tests::repo_root().join("tests/compose/base-image.sh"))
            .output()
            .context("making the base image")?,
        "tests/compose/base-image.sh",
    )?;
    let base = String::from_utf8_lossy(&base.stdout)
        .lines()
        .last()
        .context("base-image.sh named no image")?
        .to_string();

    // The build context: the Dockerfile, its configuration, the binary under test.
    let context = tempfile::Builder::new()
        .prefix("flotilla-compose-")
        .tempdir()?;
    let root = tests::repo_root();
    copy_into(context.path(), &root.join("Dockerfile"), "Dockerfile")?;
    copy_into(
        context.path(),
        &root.join("docker/flotilla.toml"),
        "docker/flotilla.toml",
    )?;
    copy_into(context.path(), &tests::flotilla_bin(), "flotilla")?;

    let name = format!("flotilla-test-{}", std::process::id());
    let image = format!("flotilla-test:{}", std::process::id());
    let pg_port = free_port()?;
    let env = vec![
        (
            "FLOTILLA_CONTEXT".into(),
            context.path().display().to_string(),
        ),
        ("FLOTILLA_BASE".into(), base),
        ("FLOTILLA_BINARY".into(), "flotilla".into()),
        ("FLOTILLA_IMAGE".into(), image.clone()),
        ("FLOTILLA_PG_PORT".into(), pg_port.to_string()),
        ("FLOTILLA_FLIGHT_PORT".into(), free_port()?.to_string()),
        ("FLOTILLA_TPCH".into(), "0.1".into()),
    ];
    let project = Project {
        compose,
        name,
        env,
        image,
    };
    project.run(&["up", "-d", "--build"])?;

    // Up: the coordinator answers and both executors have registered.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ready = psql(pg_port, "select count(*) from flotilla.executors")
            .ok()
            .is_some_and(|rows| rows == vec![vec![Some("2".to_string())]]);
        if ready {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the compose cluster did not come up:\n{}",
            project.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    for q in [1, 6, 18] {
        let rows = psql(pg_port, &tpch_query(q)?)?;
        compare(&tpch_answer(0.1, q)?, &rows).with_context(|| format!("q{q} through psql"))?;
    }

    // A query long enough to stop an executor under it.
    let long = "select count(*) from lineitem a join lineitem b \
                on a.l_suppkey = b.l_suppkey and a.l_linenumber = b.l_linenumber";
    let expected = psql(pg_port, long)?;
    let query = std::thread::spawn(move || psql(pg_port, long));
    std::thread::sleep(Duration::from_millis(700));
    ensure!(
        !query.is_finished(),
        "the long query ended before an executor could stop"
    );
    project.run(&["stop", "--timeout", "5", "executor-1"])?;
    let rows = query
        .join()
        .map_err(|_| anyhow::anyhow!("the query thread panicked"))?
        .with_context(|| format!("the query under a stopped executor:\n{}", project.logs()))?;
    ensure!(
        rows == expected,
        "with executor-1 stopped: {rows:?}, clean: {expected:?}"
    );
    let retried = psql(pg_port, "select retried from flotilla.queries")?;
    ensure!(
        retried != vec![vec![Some("0".to_string())]],
        "the query was not run again after executor-1 stopped: {retried:?}"
    );
    let rows = psql(pg_port, "select executor_id from flotilla.executors")?;
    ensure!(
        rows == vec![vec![Some("executor-2".to_string())]],
        "executors after the stop: {rows:?}"
    );
    compare(&tpch_answer(0.1, 6)?, &psql(pg_port, &tpch_query(6)?)?)
        .context("q6 on the one executor left")?;
    Ok(())
}
