//! Replayed traffic of tools that cannot run here (DBeaver, Metabase, Grafana,
//! pgAdmin, pgcli, psql, ADBC's Postgres driver, Power BI's Npgsql): every
//! captured statement of `../shared/clients-fixtures/*.sql`, through the simple
//! and the extended query protocol, answers without error; the catalog
//! listings the tools build their trees from name the real tables.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tests::cluster::{simple_rows, Cluster, ClusterOptions};
use tokio_postgres::SimpleQueryMessage;

/// Power BI (Npgsql) loads the server's types with this query on connect.
const NPGSQL_TYPE_LOADING: &str = "/*** Load all supported types ***/
SELECT ns.nspname, a.typname, a.oid, a.typrelid, a.typbasetype,
CASE WHEN pg_proc.proname='array_recv' THEN 'a' ELSE a.typtype END AS type,
CASE
  WHEN pg_proc.proname='array_recv' THEN a.typelem
  WHEN a.typtype='r' THEN rngsubtype
  ELSE 0
END AS elemoid,
CASE
  WHEN pg_proc.proname IN ('array_recv','oidvectorrecv') THEN 3
  WHEN a.typtype='r' THEN 2
  WHEN a.typtype='d' THEN 1
  ELSE 0
END AS ord
FROM pg_type AS a
JOIN pg_namespace AS ns ON (ns.oid = a.typnamespace)
JOIN pg_proc ON pg_proc.oid = a.typreceive
LEFT OUTER JOIN pg_class AS cls ON (cls.oid = a.typrelid)
LEFT OUTER JOIN pg_type AS b ON (b.oid = a.typelem)
LEFT OUTER JOIN pg_class AS elemcls ON (elemcls.oid = b.typrelid)
LEFT OUTER JOIN pg_range ON (pg_range.rngtypid = a.oid)
WHERE
  a.typtype IN ('b', 'r', 'm', 'e', 'd') OR
  (a.typtype = 'c' AND cls.relkind='c') OR
  (pg_proc.proname='array_recv' AND (
    b.typtype IN ('b', 'r', 'm', 'e', 'd') OR
    (b.typtype = 'p' AND b.typname IN ('record', 'void')) OR
    (b.typtype = 'c' AND elemcls.relkind='c')
  )) OR
  (a.typtype = 'p' AND a.typname IN ('record', 'void'))
ORDER BY ord";

const NPGSQL_COMPOSITES: &str =
    "/*** Load field definitions for (free-standing) composite types ***/
SELECT typ.oid, att.attname, att.atttypid
FROM pg_type AS typ
JOIN pg_namespace AS ns ON (ns.oid = typ.typnamespace)
JOIN pg_class AS cls ON (cls.oid = typ.typrelid)
JOIN pg_attribute AS att ON (att.attrelid = typ.typrelid)
WHERE
  (typ.typtype = 'c' AND cls.relkind='c') AND
  attnum > 0 AND
  NOT attisdropped
ORDER BY typ.oid, att.attnum";

const NPGSQL_ENUMS: &str = "/*** Load enum fields ***/
SELECT pg_type.oid, enumlabel
FROM pg_enum
JOIN pg_type ON pg_type.oid=enumtypid
ORDER BY oid, enumsortorder";

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
    files.push((
        "powerbi-npgsql".to_string(),
        vec![
            NPGSQL_TYPE_LOADING.to_string(),
            NPGSQL_COMPOSITES.to_string(),
            NPGSQL_ENUMS.to_string(),
            "DISCARD ALL".to_string(),
        ],
    ));
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
    let types = simple_rows(&client, NPGSQL_TYPE_LOADING).await?;
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
