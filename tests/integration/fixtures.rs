//! Replayed traffic of tools that cannot run here (DBeaver, Metabase, Grafana,
//! pgAdmin, pgcli, psql, ADBC's Postgres driver, Power BI's Npgsql): every
//! captured statement of `../shared/clients-fixtures/*.sql`, through the simple
//! and the extended query protocol, answers without error; the catalog
//! listings the tools build their trees from name the real tables.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tests::cluster::{simple_rows, Cluster, ClusterOptions};
use tokio_postgres::SimpleQueryMessage;

/// The statements of one fixture file (blocks separated by `-- next` lines).
fn statements(text: &str) -> Vec<String> {
    text.split("\n-- next")
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.trim_start().starts_with("-- "))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .trim_end_matches(';')
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// What Power BI (Npgsql) sends, kept beside the client probes; the first
/// statement is its type-loading query.
fn npgsql_statements() -> Result<Vec<String>> {
    let path = tests::repo_root().join("tests/clients/npgsql.sql");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(statements(&text))
}

fn fixture_files() -> Result<Vec<(String, Vec<String>)>> {
    let dir = tests::shared_dir().join("clients-fixtures");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql") {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            files.push((name, statements(&std::fs::read_to_string(&path)?)));
        }
    }
    files.sort();
    files.push(("powerbi-npgsql".to_string(), npgsql_statements()?));
    Ok(files)
}

fn cell_text(messages: &[SimpleQueryMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            for i in 0..row.len() {
                out.push_str(row.get(i).unwrap_or(""));
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_fixtures_replay_through_both_protocols() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let files = fixture_files()?;
    assert!(files.len() >= 8, "fixture files: {}", files.len());
    let mut failures = Vec::new();
    let mut total = 0;
    for (tool, statements) in &files {
        let client = cluster.client().await?;
        let mut seen_tables = false;
        for sql in statements {
            total += 1;
            let short: String = sql.chars().take(90).collect::<String>().replace('\n', " ");
            match client.simple_query(sql).await {
                Ok(messages) => {
                    let text = cell_text(&messages);
                    seen_tables |= text.contains("lineitem") || text.contains("public");
                }
                Err(e) => failures.push(format!("{tool} simple: {short}: {e:?}")),
            }
            // The extended protocol: Parse/Describe, then Bind/Execute.
            match client.prepare(sql).await {
                Ok(statement) => {
                    if let Err(e) = client.query(&statement, &[]).await {
                        failures.push(format!("{tool} extended execute: {short}: {e:?}"));
                    }
                }
                Err(e) => failures.push(format!("{tool} extended parse: {short}: {e:?}")),
            }
        }
        // Tools that browse the catalog see the real schema and tables.
        if ["dbeaver", "grafana", "metabase", "pgcli", "psql"].contains(&tool.as_str())
            && !seen_tables
        {
            failures.push(format!("{tool}: no statement listed public or lineitem"));
        }
    }
    // Npgsql maps result types from what the type-loading query returns.
    let client = cluster.client().await?;
    let types = simple_rows(&client, &npgsql_statements()?[0]).await?;
    let names: Vec<String> = types.iter().filter_map(|r| r[1].clone()).collect();
    for wanted in [
        "int4",
        "int8",
        "text",
        "numeric",
        "date",
        "timestamp",
        "bool",
        "_int4",
    ] {
        if !names.iter().any(|n| n == wanted) {
            failures.push(format!("Npgsql type loading lacks {wanted}: {names:?}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} statements failed:\n{}",
            failures.len(),
            total * 2,
            failures.join("\n")
        );
    }
    println!("{total} fixture statements answered through both protocols");
    Ok(())
}
