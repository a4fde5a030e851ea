//! The Arrow Flight SQL front door through arrow-flight's own client: the
//! handshake and bearer tokens, metadata commands, statements and prepared
//! statements, cancellation, and bad input that must not hurt the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    Any, CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables,
    CommandPreparedStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{Action, FlightInfo, HandshakeRequest, Ticket};
use datafusion::arrow;
use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use prost::Message;
use tests::cluster::{Cluster, ClusterOptions, USER};
use tonic::transport::Channel;
use tonic::Code;

const PASSWORD: &str = "s3cret-pw";

async fn channel(port: u16) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// Runs a FlightInfo's first endpoint and returns the streamed schema and batches.
async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: &FlightInfo,
) -> Result<(Arc<Schema>, Vec<RecordBatch>)> {
    let ticket = info.endpoint[0]
        .ticket
        .clone()
        .ok_or_else(|| anyhow!("endpoint without ticket"))?;
    let mut stream = client.do_get(ticket).await?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.try_next().await? {
        batches.push(batch);
    }
    let schema = stream
        .schema()
        .cloned()
        .ok_or_else(|| anyhow!("stream without schema"))?;
    Ok((schema, batches))
}

fn code_of(error: &FlightError) -> Option<Code> {
    match error {
        FlightError::Tonic(status) => Some(status.code()),
        _ => None,
    }
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let col = datafusion::arrow::compute::cast(b.column(column), &DataType::Utf8).unwrap();
            let col = col.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..col.len())
                .map(|i| col.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_authenticates_queries_and_describes_the_catalog() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions {
        password: Some(PASSWORD.to_string()),
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(30)).await?;
    let mut client = FlightSqlServiceClient::new(channel(cluster.flight_port).await?);

    // No credentials, wrong password, forged token: UNAUTHENTICATED.
    let err = client.get_catalogs().await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::Unauthenticated), "{err}");
    assert!(client.handshake(USER, "wrong").await.is_err());
    client.set_token("forged-token".into());
    let err = client.get_catalogs().await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::Unauthenticated), "{err}");
    client.clear_token();

    // Unpadded Basic credentials (as ADBC sends them) get a bearer header back.
    let mut raw = FlightServiceClient::new(channel(cluster.flight_port).await?);
    let mut request = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("{USER}:{PASSWORD}"))
    };
    assert!(!basic.ends_with('='));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse()?);
    let response = raw.handshake(request).await?;
    let bearer = response
        .metadata()
        .get("authorization")
        .context("no authorization header in the handshake response")?
        .to_str()?
        .to_string();
    assert!(bearer.starts_with("Bearer "), "{bearer}");

    client.handshake(USER, PASSWORD).await?;
    assert!(client.token().is_some());

    // GetSqlInfo
    let info = client
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerVersion,
            SqlInfo::FlightSqlServerArrowVersion,
            SqlInfo::FlightSqlServerReadOnly,
            SqlInfo::FlightSqlServerTransaction,
            SqlInfo::SqlKeywords,
        ])
        .await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 6, "one row per requested SqlInfo");
    let names: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let col = arrow::compute::cast(b.column(0), &DataType::Int64).unwrap();
            col.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert!(names.contains(&(SqlInfo::FlightSqlServerName as i64)));
    let formatted = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    assert!(formatted.contains("Flotilla"), "{formatted}");

    // Catalogs, schemas, tables with their Arrow schemas, table types, keys, types.
    let info = client.get_catalogs().await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert!(strings(&batches, 0).contains(&"flotilla".to_string()));
    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("flotilla".into()),
            db_schema_filter_pattern: None,
        })
        .await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert!(strings(&batches, 1).contains(&"public".to_string()));
    let info = client
        .get_tables(CommandGetTables {
            catalog: Some("flotilla".into()),
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("line%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await?;
    let (schema, batches) = fetch(&mut client, &info).await?;
    assert_eq!(schema.fields().len(), 5, "with table_schema");
    assert_eq!(strings(&batches, 2), vec!["lineitem".to_string()]);
    assert_eq!(strings(&batches, 3), vec!["TABLE".to_string()]);
    let ipc = batches[0]
        .column(4)
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .context("table_schema is binary")?
        .value(0)
        .to_vec();
    let table_schema = arrow::ipc::convert::try_schema_from_ipc_buffer(&ipc)?;
    assert_eq!(table_schema.fields().len(), 16);
    assert_eq!(
        table_schema.field_with_name("l_quantity")?.data_type(),
        &DataType::Decimal128(15, 2)
    );
    let info = client.get_table_types().await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert!(strings(&batches, 0).contains(&"TABLE".to_string()));
    let info = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: None,
            table: "lineitem".into(),
        })
        .await?;
    let (schema, batches) = fetch(&mut client, &info).await?;
    assert_eq!(schema.fields().len(), 6);
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    let info = client
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert!(strings(&batches, 0).contains(&"BIGINT".to_string()));

    // A statement: the FlightInfo schema is exactly the streamed one.
    let info = client
        .execute(
            "SELECT n_nationkey, n_name FROM nation ORDER BY n_nationkey".into(),
            None,
        )
        .await?;
    let announced = info.clone().try_decode_schema()?;
    let (streamed, batches) = fetch(&mut client, &info).await?;
    assert_eq!(announced, *streamed, "FlightInfo schema == DoGet schema");
    let names = strings(&batches, 1);
    assert_eq!(names.len(), 25);
    assert_eq!(names[0], "ALGERIA");
    assert_eq!(names[7], "GERMANY");

    // TPC-H q06 through Flight SQL equals the reference answer.
    let q06 = std::fs::read_to_string(tests::shared_dir().join("tpch/queries/q06.sql"))?;
    let info = client.execute(q06, None).await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    let revenue: f64 = strings(&batches, 0)[0].parse()?;
    assert!(
        (revenue - 11803420.2534).abs() < 1e-3,
        "q06 revenue {revenue}"
    );

    // Prepared statement with a parameter bound through DoPut, twice.
    let mut prepared = client
        .prepare(
            "SELECT n_name FROM nation WHERE n_nationkey = $1".into(),
            None,
        )
        .await?;
    let params = prepared.parameter_schema()?.clone();
    assert_eq!(params.fields().len(), 1);
    assert_eq!(params.field(0).data_type(), &DataType::Int64);
    for (key, name) in [(7i64, "GERMANY"), (0, "ALGERIA")] {
        let batch = RecordBatch::try_new(
            Arc::new(params.clone()),
            vec![Arc::new(Int64Array::from(vec![key]))],
        )?;
        prepared.set_parameters(batch)?;
        let info = prepared.execute().await?;
        let (schema, batches) = fetch(&mut client, &info).await?;
        assert_eq!(&info.clone().try_decode_schema()?, schema.as_ref());
        assert_eq!(strings(&batches, 0), vec![name.to_string()]);
    }
    // Wrong parameter count and type: INVALID_ARGUMENT; the statement survives.
    let two = Schema::new(vec![
        Field::new("$1", DataType::Int64, true),
        Field::new("$2", DataType::Int64, true),
    ]);
    prepared.set_parameters(RecordBatch::try_new(
        Arc::new(two),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int64Array::from(vec![2])),
        ],
    )?)?;
    let err = prepared.execute().await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::InvalidArgument), "{err}");
    let text = Schema::new(vec![Field::new("$1", DataType::Utf8, true)]);
    prepared.set_parameters(RecordBatch::try_new(
        Arc::new(text),
        vec![Arc::new(StringArray::from(vec!["not a number"]))],
    )?)?;
    let err = prepared.execute().await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::InvalidArgument), "{err}");
    prepared.close().await?;

    // A handle that does not exist, a ticket that is not ours, a foreign command,
    // bytes that are no command at all: each refused (with the code where one is owed).
    let missing_handle = CommandPreparedStatementQuery {
        prepared_statement_handle: b"no-such-handle".to_vec().into(),
    };
    let forged_ticket = TicketStatementQuery {
        statement_handle: b"forged".to_vec().into(),
    };
    let foreign = Any {
        type_url: "type.googleapis.com/some.other.Message".into(),
        value: b"xyz".to_vec().into(),
    };
    for (ticket, code) in [
        (
            missing_handle.as_any().encode_to_vec(),
            Some(Code::NotFound),
        ),
        (forged_ticket.as_any().encode_to_vec(), Some(Code::NotFound)),
        (foreign.encode_to_vec(), None),
        (b"\xff\xfe garbage".to_vec(), None),
    ] {
        let err = client
            .do_get(Ticket {
                ticket: ticket.into(),
            })
            .await
            .unwrap_err();
        if code.is_some() {
            assert_eq!(code_of(&err), code, "{err}");
        }
    }
    // Bad SQL is INVALID_ARGUMENT with its SQLSTATE; a missing table NOT_FOUND.
    let err = client.execute("SELEC 1".into(), None).await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::InvalidArgument), "{err}");
    let err = client
        .execute("SELECT * FROM no_such_table".into(), None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(Code::NotFound), "{err}");

    // DDL through CommandStatementUpdate; the new table is queryable.
    let csv = cluster.data_dir.join("flight_t.csv");
    std::fs::write(&csv, "a,b\n1,x\n2,y\n")?;
    let rows = client
        .execute_update(
            format!(
                "CREATE EXTERNAL TABLE flight_t STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true')",
                csv.display()
            ),
            None,
        )
        .await?;
    assert_eq!(rows, 0);
    let info = client
        .execute("SELECT b FROM flight_t ORDER BY a".into(), None)
        .await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert_eq!(strings(&batches, 0), vec!["x".to_string(), "y".to_string()]);
    client
        .execute_update("DROP TABLE flight_t".into(), None)
        .await?;

    // CancelFlightInfo: a planned query that is cancelled before DoGet fails
    // with CANCELLED instead of running.
    let info = client
        .execute("SELECT count(*) FROM lineitem".into(), None)
        .await?;
    let cancel = arrow_flight::CancelFlightInfoRequest {
        info: Some(info.clone()),
    };
    let mut results = client
        .do_action(Action {
            r#type: "CancelFlightInfo".into(),
            body: cancel.encode_to_vec().into(),
        })
        .await?;
    let result = results.message().await?.context("no cancel result")?;
    let result = arrow_flight::CancelFlightInfoResult::decode(result.body)?;
    assert_eq!(result.status, arrow_flight::CancelStatus::Cancelled as i32);
    let err = fetch(&mut client, &info).await.unwrap_err();
    assert!(err.to_string().contains("cancel"), "{err}");

    // The server still serves, on both front doors.
    let info = client.execute("SELECT 1 AS one".into(), None).await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert_eq!(strings(&batches, 0), vec!["1".to_string()]);
    let pg = cluster.client().await?;
    let row = pg.query_one("SELECT count(*) FROM region", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 5);

    // CloseSession ends the token.
    let mut results = client
        .do_action(Action {
            r#type: "CloseSession".into(),
            body: Default::default(),
        })
        .await?;
    assert!(results.message().await?.is_some());
    let err = client.get_catalogs().await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::Unauthenticated), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passwords_use_scram() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions {
        password: Some(PASSWORD.to_string()),
        ..ClusterOptions::minimal()
    })?;
    let client = cluster.client().await?;
    let row = client.query_one("SELECT 1::bigint", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 1);

    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD), (USER, "")] {
        let err = tests::cluster::connect_as(cluster.pg_port, user, Some(password))
            .await
            .err()
            .with_context(|| format!("{user}/{password} was let in"))?;
        let state = err
            .chain()
            .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.code().cloned());
        assert_eq!(
            state.as_ref().map(|s| s.code()),
            Some("28P01"),
            "{user}: {err:#}"
        );
    }
    // psql negotiates SCRAM-SHA-256 with the same password.
    let output = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &cluster.pg_port.to_string()])
        .args(["-U", USER, "-d", "flotilla", "-At", "-c", "select 40 + 2"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()?;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
    Ok(())
}

/// With certificates configured, both front doors speak TLS: psql verifies the
/// server certificate after SSLRequest, and a Flight SQL client connects over
/// HTTPS with the same certificate as its root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_front_doors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    let (ca, cert, key) = (path("ca.crt"), path("server.crt"), path("server.key"));
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    let openssl = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .context("running openssl")?;
        anyhow::ensure!(out.status.success(), "openssl {args:?}: {out:?}");
        Ok(())
    };
    // A test CA, and a server certificate it signs for 127.0.0.1.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=flotilla-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    let cluster = Cluster::standalone(ClusterOptions {
        password: Some(PASSWORD.to_string()),
        config: Some(format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )),
        ..ClusterOptions::minimal()
    })?;

    let psql = |mode: &str| {
        std::process::Command::new("psql")
            .args([
                "-X",
                "-At",
                "-h",
                "127.0.0.1",
                "-U",
                USER,
                "-d",
                "flotilla",
                "-p",
            ])
            .arg(cluster.pg_port.to_string())
            .args(["-c", "select 'over tls'"])
            .env("PGPASSWORD", PASSWORD)
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", &ca)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
    };
    let out = psql("verify-full")?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");

    let pem = std::fs::read(&ca)?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", cluster.flight_port))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| anyhow!("TLS connect: {e:?}"))?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(USER, PASSWORD).await?;
    let info = client
        .execute("SELECT 'over tls' AS t".into(), None)
        .await?;
    let (_, batches) = fetch(&mut client, &info).await?;
    assert_eq!(strings(&batches, 0), vec!["over tls".to_string()]);

    // Plain text to the TLS port is refused, and the server goes on.
    let mut plain = FlightSqlServiceClient::new(channel_lenient(cluster.flight_port).await?);
    assert!(plain.handshake(USER, PASSWORD).await.is_err());
    let info = client.execute("SELECT 1 AS one".into(), None).await?;
    assert_eq!(
        strings(&fetch(&mut client, &info).await?.1, 0),
        vec!["1".to_string()]
    );
    Ok(())
}

/// A plain-text channel that connects lazily (the TLS server refuses it later).
async fn channel_lenient(port: u16) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// Cleartext and MD5 password methods, when configured, check the same users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cleartext_and_md5_when_configured() -> Result<()> {
    for method in ["password", "md5"] {
        let cluster = Cluster::standalone(ClusterOptions {
            password: Some(PASSWORD.to_string()),
            config: Some(format!("[auth]\nmethod = \"{method}\"\n")),
            ..ClusterOptions::minimal()
        })?;
        let client = cluster.client().await?;
        let row = client.query_one("SELECT 'in'", &[]).await?;
        assert_eq!(row.get::<_, String>(0), "in", "{method}");
        let err = tests::cluster::connect_as(cluster.pg_port, USER, Some("nope"))
            .await
            .err()
            .with_context(|| format!("{method}: a wrong password was accepted"))?;
        let state = err
            .chain()
            .find_map(|e| e.downcast_ref::<tokio_postgres::Error>())
            .and_then(|e| e.code().cloned());
        assert_eq!(
            state.as_ref().map(|s| s.code()),
            Some("28P01"),
            "{method}: {err:#}"
        );
    }
    Ok(())
}

/// A bearer token stops working once `auth.token_ttl` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_tokens_expire() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions {
        password: Some(PASSWORD.to_string()),
        config: Some("[auth]\ntoken_ttl = \"1s\"\n".into()),
        ..ClusterOptions::minimal()
    })?;
    let mut client = FlightSqlServiceClient::new(channel(cluster.flight_port).await?);
    client.handshake(USER, PASSWORD).await?;
    client.get_catalogs().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = client.get_catalogs().await.unwrap_err();
    assert_eq!(code_of(&err), Some(Code::Unauthenticated), "{err}");
    client.clear_token();
    client.handshake(USER, PASSWORD).await?;
    client.get_catalogs().await?;
    Ok(())
}

/// A small result is small on the wire. String columns arrive from Parquet as
/// views into decoded pages, and Arrow IPC sends a view column's buffers whole:
/// TPC-H Q10 without broadcast joins (its 20 rows cut by a TopK from joined
/// customer rows) took 498 KB at SF0.1, and at SF1 7 MB, past the 4 MiB a gRPC
/// client accepts by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_results_are_small_on_the_wire() -> Result<()> {
    let cluster = Cluster::standalone(ClusterOptions::default())?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let mut sql = FlightSqlServiceClient::new(channel(cluster.flight_port).await?);
    sql.handshake(USER, "").await?;
    sql.execute_update("SET distributed.broadcast_joins = false".into(), None)
        .await?;
    let q10 = std::fs::read_to_string(tests::shared_dir().join("tpch/queries/q10.sql"))?;
    let info = sql
        .execute(q10.trim().trim_end_matches(';').to_string(), None)
        .await?;
    let ticket = info.endpoint[0].ticket.clone().context("no ticket")?;
    // The raw messages, as a client receives them.
    let mut raw = FlightServiceClient::new(channel(cluster.flight_port).await?);
    let mut request = tonic::Request::new(ticket);
    let token = sql.token().context("no token")?;
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let messages: Vec<_> = raw
        .do_get(request)
        .await?
        .into_inner()
        .try_collect()
        .await?;
    let bytes: usize = messages
        .iter()
        .map(|m| m.data_header.len() + m.data_body.len())
        .sum();
    let batches =
        arrow_flight::utils::flight_data_to_batches(&messages).context("decoding the stream")?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 20, "Q10 returns the top 20 customers");
    assert!(
        bytes < 64 * 1024,
        "{rows} rows took {bytes} bytes in {} messages",
        messages.len()
    );
    Ok(())
}
