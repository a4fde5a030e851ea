//! Wire-level behaviour real drivers check: ParameterStatus at start-up,
//! BackendKeyData, transaction status in ReadyForQuery, multi-statement queries,
//! binary results, typed parameters, CancelRequest.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use tests::cluster::{simple_rows, sqlstate, wait_exited, Cluster, ClusterOptions};
use tests::pgraw::{Message, RawConnection};
use tokio_postgres::NoTls;

fn count(messages: &[Message], tag: u8) -> usize {
    messages.iter().filter(|m| m.tag == tag).count()
}

fn status(messages: &[Message]) -> Option<u8> {
    messages.last().and_then(Message::ready_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_transactions_and_multi_statement_queries() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::minimal())?;
    let mut conn = RawConnection::connect(cluster.pg_port).await?;

    let params: std::collections::HashMap<String, String> =
        conn.startup.iter().filter_map(Message::parameter).collect();
    assert_eq!(
        params.get("server_version").map(String::as_str),
        Some("16.6")
    );
    assert_eq!(
        params.get("client_encoding").map(String::as_str),
        Some("UTF8")
    );
    assert_eq!(
        params.get("DateStyle").map(String::as_str),
        Some("ISO, MDY")
    );
    assert_eq!(
        params.get("integer_datetimes").map(String::as_str),
        Some("on")
    );
    assert_eq!(
        params
            .get("standard_conforming_strings")
            .map(String::as_str),
        Some("on")
    );
    assert_eq!(count(&conn.startup, b'K'), 1, "BackendKeyData");
    assert_eq!(status(&conn.startup), Some(b'I'));

    // Encryption requests are declined (no TLS configured) and start-up goes on.
    let (mut other, answers) =
        RawConnection::connect_after(cluster.pg_port, &[80877104, 80877103]).await?;
    assert_eq!(answers, b"NN".to_vec());
    assert!(other
        .query_bytes(b"select 1")
        .await?
        .iter()
        .any(|m| m.tag == b'D'));

    // Transaction status follows BEGIN, errors and ROLLBACK.
    assert_eq!(status(&conn.query_bytes(b"BEGIN").await?), Some(b'T'));
    assert_eq!(status(&conn.query_bytes(b"select 1").await?), Some(b'T'));
    assert_eq!(status(&conn.query_bytes(b"select 1/0").await?), Some(b'E'));
    assert_eq!(status(&conn.query_bytes(b"ROLLBACK").await?), Some(b'I'));
    assert_eq!(
        status(&conn.query_bytes(b"START TRANSACTION").await?),
        Some(b'T')
    );
    assert_eq!(status(&conn.query_bytes(b"COMMIT").await?), Some(b'I'));

    // One result per statement; an error stops the rest.
    let replies = conn
        .query_bytes(b"select 1; set application_name = 'x'; select 2, 3")
        .await?;
    assert_eq!(count(&replies, b'T'), 2, "{replies:?}");
    assert_eq!(count(&replies, b'C'), 3, "{replies:?}");
    let replies = conn.query_bytes(b"select 1; select 1/0; select 3").await?;
    assert_eq!(count(&replies, b'C'), 1, "{replies:?}");
    assert_eq!(count(&replies, b'E'), 1, "{replies:?}");
    assert_eq!(count(&replies, b'D'), 1, "{replies:?}");

    // An empty query and a comment-only query.
    let replies = conn.query_bytes(b";").await?;
    assert_eq!(count(&replies, b'I'), 1, "EmptyQueryResponse: {replies:?}");
    let replies = conn.query_bytes(b"-- nothing").await?;
    assert_eq!(count(&replies, b'I'), 1, "EmptyQueryResponse: {replies:?}");
    Ok(())
}

/// The coordinator plans statements in a state it keeps from one query to the
/// next (`coordinator::engine::Planning`); each statement still reads its own
/// start time, and a setting changed between two queries reaches the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_statement_plans_at_its_own_time() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::minimal())?;
    let client = cluster.client().await?;
    let first: NaiveDateTime = client
        .query_one("select now()::timestamp", &[])
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second: NaiveDateTime = client
        .query_one("select now()::timestamp", &[])
        .await?
        .get(0);
    assert!(
        second >= first + chrono::Duration::milliseconds(20),
        "now() stood still: {first} then {second}"
    );
    let extra = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
    };
    let before = extra(
        client
            .simple_query("select current_setting('extra_float_digits')")
            .await?,
    );
    client.batch_execute("set extra_float_digits = 2").await?;
    let after = extra(
        client
            .simple_query("select current_setting('extra_float_digits')")
            .await?,
    );
    assert_ne!(before.as_deref(), Some("2"));
    assert_eq!(after.as_deref(), Some("2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_and_typed_parameters() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::minimal())?;
    let client = cluster.client().await?;
    // tokio-postgres asks for every result column in binary.
    let row = client
        .query_one(
            "select cast(1 as smallint), cast(2 as int), cast(3 as bigint), \
             cast(1.5 as double), cast(2.5 as real), true, 'x', \
             cast('2024-01-02' as date), cast('2024-01-02 03:04:05' as timestamp), \
             cast(12.34 as decimal(10,2)), cast(null as bigint)",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i16>(0), 1);
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(row.get::<_, i64>(2), 3);
    assert_eq!(row.get::<_, f64>(3), 1.5);
    assert_eq!(row.get::<_, f32>(4), 2.5);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "x");
    let day = NaiveDate::from_ymd_opt(2024, 1, 2).expect("valid date");
    assert_eq!(row.get::<_, NaiveDate>(7), day);
    assert_eq!(
        row.get::<_, NaiveDateTime>(8),
        day.and_hms_opt(3, 4, 5).expect("valid time")
    );
    assert_eq!(row.get::<_, Decimal>(9), Decimal::new(1234, 2));
    assert_eq!(row.get::<_, Option<i64>>(10), None);

    // Typed parameters, sent in binary.
    let row = client
        .query_one(
            "select $1::int + 1, $2::text || 'y', $3::double * 2, $4::date, $5::bool",
            &[&41i32, &"x", &1.25f64, &day, &false],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "xy");
    assert_eq!(row.get::<_, f64>(2), 2.5);
    assert_eq!(row.get::<_, NaiveDate>(3), day);
    assert!(!row.get::<_, bool>(4));

    // A named statement, executed twice with different values.
    let statement = client.prepare("select $1::bigint * 2").await?;
    for n in [1i64, 21] {
        let row = client.query_one(&statement, &[&n]).await?;
        assert_eq!(row.get::<_, i64>(0), n * 2);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_stops_a_running_query() -> Result<()> {
    let mut cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let token = client.cancel_token();
    // A join of 600k x 600k rows whose filter defeats statistics: it runs for hours.
    let query = tokio::spawn(async move {
        let result = client
            .simple_query(
                "select count(*) from lineitem a, lineitem b \
                 where a.l_orderkey + b.l_orderkey < 0",
            )
            .await;
        (client, result)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cancelled_at = Instant::now();
    token.cancel_query(NoTls).await?;
    let (client, result) = tokio::time::timeout(Duration::from_secs(10), query).await??;
    let err = result.expect_err("the query was cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));

    // The connection and the cluster go on.
    assert_eq!(
        simple_rows(&client, "select count(*) from nation").await?,
        vec![vec![Some("25".to_string())]]
    );

    // Stopping the cluster stops executors that may still be busy with the
    // cancelled work.
    let pids = cluster.executor_pids(&client).await?;
    drop(client);
    cluster.stop()?;
    wait_exited(&pids, Duration::from_secs(15)).await
}

/// Peak resident memory of a process, in MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A large result through the extended protocol (Execute without a row limit)
/// streams: the coordinator does not hold the rows before sending them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_results_stream() -> Result<()> {
    use futures::StreamExt;
    let cluster = Cluster::standalone(ClusterOptions::minimal())?;
    let client = cluster.client().await?;
    client.simple_query("select 1").await?;
    let before = peak_mib(cluster.pid());
    let rows: i64 = 3_000_000;
    let statement = client
        .prepare(&format!(
            "select value as a, value * 2 as b, 'row' as c from generate_series(1, {rows})"
        ))
        .await?;
    let stream = client
        .query_raw(&statement, std::iter::empty::<i64>())
        .await?;
    futures::pin_mut!(stream);
    let mut seen = 0i64;
    let mut last = 0i64;
    while let Some(row) = stream.next().await {
        last = last.max(row?.get::<_, i64>(0));
        seen += 1;
    }
    assert_eq!((seen, last), (rows, rows));
    let grown = peak_mib(cluster.pid()) - before;
    // Held whole, these rows take about 450 MiB in the coordinator; streamed,
    // a few batches.
    assert!(grown < 200.0, "coordinator peak grew by {grown:.0} MiB");
    Ok(())
}
