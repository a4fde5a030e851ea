//! The catalog: tables created in SQL survive a restart, information_schema
//! reflects them, system tables show the executors, and statements that need no
//! table data keep working while no executor is alive.

use std::time::{Duration, Instant};

use anyhow::Result;
use tests::cluster::{simple_rows, sqlstate, Cluster, ClusterOptions};

fn write_csv(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = dir.join("people.csv");
    std::fs::write(&path, "id,name,age\n1,ann,31\n2,bob,\n3,cy,45\n")?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_tables_survive_a_coordinator_restart() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-catalog-")
        .tempdir()?;
    let csv = write_csv(dir.path())?;
    let options = ClusterOptions {
        executors: 1,
        tpch: None,
        data_dir: Some(dir.path().to_path_buf()),
        ..ClusterOptions::default()
    };
    {
        let cluster = Cluster::standalone(options.clone())?;
        cluster.wait_executors(1, Duration::from_secs(30)).await?;
        let client = cluster.client().await?;
        client
            .simple_query(&format!(
                "CREATE EXTERNAL TABLE people (id BIGINT, name VARCHAR, age INT) STORED AS CSV \
                 LOCATION '{}' OPTIONS ('format.has_header' 'true')",
                csv.display()
            ))
            .await?;
        client
            .simple_query(&format!(
                "CREATE EXTERNAL TABLE doomed STORED AS CSV LOCATION '{}' \
                 OPTIONS ('format.has_header' 'true')",
                csv.display()
            ))
            .await?;
        client.simple_query("DROP TABLE doomed").await?;
        let rows = simple_rows(&client, "select sum(age) from people").await?;
        assert_eq!(rows, vec![vec![Some("76".to_string())]]);
    }
    let cluster = Cluster::standalone(options)?;
    cluster.wait_executors(1, Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let rows = simple_rows(
        &client,
        "select name from people where age is null order by id",
    )
    .await?;
    assert_eq!(rows, vec![vec![Some("bob".to_string())]]);
    let tables = simple_rows(
        &client,
        "select table_name from information_schema.tables \
         where table_schema = 'public' order by table_name",
    )
    .await?;
    assert_eq!(tables, vec![vec![Some("people".to_string())]]);
    let columns = simple_rows(
        &client,
        "select column_name, data_type from information_schema.columns \
         where table_name = 'people' order by ordinal_position",
    )
    .await?;
    assert_eq!(columns.len(), 3);
    assert_eq!(columns[0][0].as_deref(), Some("id"));
    let err = client
        .simple_query("select * from doomed")
        .await
        .expect_err("dropped table is gone after restart");
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_executors_only_table_queries_fail_and_fast() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-noexec-")
        .tempdir()?;
    let csv = write_csv(dir.path())?;
    let config = format!(
        "[[table]]\nname = \"people\"\nformat = \"csv\"\nlocation = \"{}\"\n\
         options = {{ \"format.has_header\" = \"true\" }}\n",
        csv.display()
    );
    let cluster = Cluster::coordinator_only(dir.path(), &config)?;
    let client = cluster.client().await?;
    assert_eq!(
        simple_rows(&client, "select 1 + 1").await?,
        vec![vec![Some("2".to_string())]]
    );
    assert_eq!(
        simple_rows(&client, "show server_version").await?,
        vec![vec![Some("16.6".to_string())]]
    );
    client.simple_query("set application_name = 'x'").await?;
    let names = simple_rows(
        &client,
        "select table_name from information_schema.tables where table_schema = 'public'",
    )
    .await?;
    assert_eq!(names, vec![vec![Some("people".to_string())]]);
    assert!(simple_rows(&client, "select * from flotilla.executors")
        .await?
        .is_empty());

    let started = Instant::now();
    let err = client
        .simple_query("select count(*) from people")
        .await
        .expect_err("no executor to run the scan");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("57P03"), "{err:?}");
    assert_eq!(
        simple_rows(&client, "select 3").await?,
        vec![vec![Some("3".to_string())]]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_is_restarted_and_reregisters() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let before = simple_rows(
        &client,
        "select executor_id, pid from flotilla.executors order by executor_id",
    )
    .await?;
    let count_before = simple_rows(&client, "select count(*) from lineitem").await?;
    let victim: i32 = before[0][1].as_deref().unwrap_or("0").parse()?;
    assert!(victim > 0);
    unsafe {
        libc::kill(victim, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = simple_rows(
            &client,
            "select executor_id, pid from flotilla.executors order by executor_id",
        )
        .await?;
        let restarted = now.len() == 2
            && now
                .iter()
                .all(|r| r[1].as_deref() != Some(victim.to_string().as_str()));
        if restarted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "executor not back within 30 s: {now:?}\n{}",
            cluster.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = simple_rows(&client, "select count(*) from lineitem").await?;
    assert_eq!(rows, count_before);
    Ok(())
}
