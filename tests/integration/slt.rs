//! sqllogictest files (`tests/slt/*.slt`) run through the Postgres wire protocol
//! against a standalone cluster. `__DATA__` in a file stands for the cluster's data
//! dir, where `tests/slt/data/` is copied. `FLOTILLA_SLT_COMPLETE=1` rewrites the
//! expected results from what the server answers (review the diff).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use tests::cluster::{Cluster, ClusterOptions};
use tokio_postgres::{Client, SimpleQueryMessage};

struct PgWire {
    client: Client,
}

#[derive(Debug)]
enum PgWireError {
    Query(tokio_postgres::Error),
    Connect(String),
}

impl std::fmt::Display for PgWireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The server's message (with its SQLSTATE), not tokio-postgres' wrapper text.
        match self {
            PgWireError::Query(e) => match e.as_db_error() {
                Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
                None => write!(f, "{e}"),
            },
            PgWireError::Connect(message) => write!(f, "cannot connect: {message}"),
        }
    }
}

impl std::error::Error for PgWireError {}

#[async_trait]
impl sqllogictest::AsyncDB for PgWire {
    type Error = PgWireError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, PgWireError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(PgWireError::Query)?;
        let mut described = false;
        let mut columns = 0;
        let mut rows = Vec::new();
        let mut affected = 0;
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(cols) => {
                    described = true;
                    columns = cols.len();
                }
                SimpleQueryMessage::Row(row) => {
                    described = true;
                    columns = row.len();
                    rows.push(
                        (0..row.len())
                            .map(|i| match row.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::CommandComplete(n) => affected = n,
                _ => {}
            }
        }
        if described {
            Ok(DBOutput::Rows {
                types: vec![DefaultColumnType::Any; columns],
                rows,
            })
        } else {
            Ok(DBOutput::StatementComplete(affected))
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "flotilla"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await
    }

    fn error_sql_state(err: &PgWireError) -> Option<String> {
        match err {
            PgWireError::Query(e) => e.code().map(|c| c.code().to_string()),
            PgWireError::Connect(_) => None,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqllogictest_files_through_pgwire() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let slt_dir = tests::repo_root().join("tests/slt");
    copy_dir(&slt_dir.join("data"), &cluster.data_dir.join("slt"))?;
    let data = cluster.data_dir.display().to_string();
    let complete = std::env::var_os("FLOTILLA_SLT_COMPLETE").is_some();

    let mut files: Vec<_> = std::fs::read_dir(&slt_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", slt_dir.display());
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let substituted = cluster
            .data_dir
            .join(file.file_name().context("file name")?);
        std::fs::write(&substituted, text.replace("__DATA__", &data))?;
        let port = cluster.pg_port;
        let mut runner = sqllogictest::Runner::new(move || async move {
            tests::cluster::connect(port)
                .await
                .map(|client| PgWire { client })
                .map_err(|e| PgWireError::Connect(format!("{e:#}")))
        });
        runner.with_column_validator(|_, _| true);
        if complete {
            runner
                .update_test_file(
                    &substituted,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    |_, _| true,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let updated = std::fs::read_to_string(&substituted)?;
            std::fs::write(&file, updated.replace(&data, "__DATA__"))?;
        } else if let Err(e) = runner.run_file_async(&substituted).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
