//! Bad input gets a clear SQLSTATE, and the same connection answers the next query.

use std::time::Duration;

use anyhow::Result;
use tests::cluster::{simple_rows, sqlstate, Cluster, ClusterOptions};
use tests::pgraw::RawConnection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_sqlstates_and_the_connection_survives() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let client = cluster.client().await?;
    let outside = "CREATE EXTERNAL TABLE evil STORED AS CSV LOCATION '/etc/passwd'";
    let escape = format!(
        "CREATE EXTERNAL TABLE evil STORED AS CSV LOCATION '{}/../../etc/passwd'",
        cluster.data_dir.display()
    );
    let garbage = "selec ".repeat(200_000);
    let cases: Vec<(&str, &str)> = vec![
        ("selec 1", "42601"),
        ("select * from no_such_table", "42P01"),
        ("select no_such_function(1)", "42883"),
        ("select 1/0", "22012"),
        ("select n_nationkey / 0 from nation", "22012"),
        ("select no_such_column from nation", "42703"),
        (outside, "42501"),
        (escape.as_str(), "42501"),
        (garbage.as_str(), "42601"),
        ("show no_such_setting", "42704"),
        ("set client_encoding = 'LATIN1'", "22023"),
    ];
    for (sql, expected) in cases {
        let err = client
            .simple_query(sql)
            .await
            .expect_err("bad input must fail");
        assert_eq!(
            sqlstate(&err).as_deref(),
            Some(expected),
            "{}: {err:?}",
            &sql[..sql.len().min(80)]
        );
        let rows = simple_rows(&client, "select 1").await?;
        assert_eq!(rows, vec![vec![Some("1".to_string())]]);
    }

    // A valid 1 MB query string is answered.
    let big = format!("select length('{}')", "x".repeat(1 << 20));
    let rows = simple_rows(&client, &big).await?;
    assert_eq!(rows, vec![vec![Some((1 << 20).to_string())]]);

    // Extended protocol: a parse error, then a parameterized query.
    let err = client.prepare("selec $1").await.expect_err("parse error");
    assert_eq!(sqlstate(&err).as_deref(), Some("42601"));
    let row = client
        .query_one("select $1::bigint + 1 as x", &[&41i64])
        .await?;
    assert_eq!(row.get::<_, i64>(0), 42);
    let err = client
        .query("select n_nationkey / $1 from nation", &[&0i64])
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"));
    let row = client
        .query_one(
            "select count(*) from nation where n_regionkey = $1",
            &[&1i64],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_unknown_statements_on_the_raw_protocol() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::minimal())?;
    let mut conn = RawConnection::connect(cluster.pg_port).await?;

    let replies = conn.query_bytes(b"select 'caf\xe9'").await?;
    let errors: Vec<_> = replies.iter().filter_map(|m| m.sqlstate()).collect();
    assert_eq!(errors, vec!["22021".to_string()], "{replies:?}");
    let replies = conn.query_bytes(b"select 1").await?;
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");

    // Bind to a statement that was never prepared, then Sync.
    let mut bind = Vec::new();
    bind.extend_from_slice(b"\0nope\0");
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    conn.send(b'B', &bind).await?;
    conn.send(b'S', &[]).await?;
    let replies = conn.until_ready().await?;
    let errors: Vec<_> = replies.iter().filter_map(|m| m.sqlstate()).collect();
    assert_eq!(errors, vec!["26000".to_string()], "{replies:?}");
    let replies = conn.query_bytes(b"select 2").await?;
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");
    Ok(())
}

/// Bind messages with the wrong number of parameters, or a value that is not of
/// the declared type: each a clear error, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_parameter_count_and_type_on_the_raw_protocol() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::minimal())?;
    let mut conn = RawConnection::connect(cluster.pg_port).await?;

    // Parse "s1": one int8 parameter.
    let mut parse = Vec::new();
    parse.extend_from_slice(b"s1\0select $1::int8 + 1\0");
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&20i32.to_be_bytes());
    conn.send(b'P', &parse).await?;
    conn.send(b'S', &[]).await?;
    let replies = conn.until_ready().await?;
    assert!(
        replies.iter().all(|m| m.sqlstate().is_none()),
        "{replies:?}"
    );

    let bind = |values: &[&[u8]]| {
        let mut bind = Vec::new();
        bind.extend_from_slice(b"\0s1\0");
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            bind.extend_from_slice(&(v.len() as i32).to_be_bytes());
            bind.extend_from_slice(v);
        }
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind
    };
    let execute = {
        let mut e = b"\0".to_vec();
        e.extend_from_slice(&0i32.to_be_bytes());
        e
    };
    for (values, what) in [
        (vec![&b"1"[..], &b"2"[..]], "two values for one parameter"),
        (vec![], "no value for one parameter"),
        (vec![&b"not a number"[..]], "text that is not an int8"),
    ] {
        conn.send(b'B', &bind(&values)).await?;
        conn.send(b'E', &execute).await?;
        conn.send(b'S', &[]).await?;
        let replies = conn.until_ready().await?;
        let errors: Vec<_> = replies.iter().filter_map(|m| m.sqlstate()).collect();
        assert_eq!(errors.len(), 1, "{what}: {replies:?}");
        assert!(
            ["08P01", "22P02", "22023", "42P02"].contains(&errors[0].as_str()),
            "{what}: {errors:?}"
        );
    }
    // The statement still works with the right value.
    conn.send(b'B', &bind(&[b"41"])).await?;
    conn.send(b'E', &execute).await?;
    conn.send(b'S', &[]).await?;
    let replies = conn.until_ready().await?;
    assert!(replies.iter().any(|m| m.tag == b'D'), "{replies:?}");
    assert!(
        replies.iter().all(|m| m.sqlstate().is_none()),
        "{replies:?}"
    );
    Ok(())
}
