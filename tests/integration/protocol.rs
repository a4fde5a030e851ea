//! Wire-level behaviour real drivers check: ParameterStatus at start-up,
//! BackendKeyData, transaction status in ReadyForQuery, multi-statement queries.

use anyhow::Result;
use tests::cluster::{Cluster, ClusterOptions};
use tests::pgraw::{Message, RawConnection};

fn count(messages: &[Message], tag: u8) -> usize {
    messages.iter().filter(|m| m.tag == tag).count()
}

fn status(messages: &[Message]) -> Option<u8> {
    messages.last().and_then(Message::ready_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_transactions_and_multi_statement_queries() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions {
        executors: 1,
        tpch: None,
        ..ClusterOptions::default()
    })?;
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
