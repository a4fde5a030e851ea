//! Tables in an S3-compatible object store (a real server: moto, from PyPI). The
//! coordinator hands the store settings to executors when they register, and the
//! scan runs on the executors.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tests::cluster::{simple_rows, sqlstate, Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct S3Server {
    child: Child,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_s3() -> Result<S3Server> {
    let port = free_port()?;
    let mut command = Command::new("python3");
    command
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .context("starting moto (pip install 'moto[server]')")?;
    let server = S3Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the S3 server did not listen on {port} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(server)
}

/// A plain HTTP PUT (the test server accepts unsigned requests).
async fn put(port: u16, path: &str, body: &[u8]) -> Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        bail!("PUT {path} failed: {}", text.lines().next().unwrap_or(""));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_in_s3_are_scanned_by_executors() -> Result<()> {
    let s3 = start_s3().await?;
    put(s3.port, "/flotilla-test", b"").await?;
    put(
        s3.port,
        "/flotilla-test/people/part-1.csv",
        b"id,name,age\n1,ann,31\n2,bob,\n",
    )
    .await?;
    put(
        s3.port,
        "/flotilla-test/people/part-2.csv",
        b"id,name,age\n3,cy,45\n",
    )
    .await?;

    let dir = tempfile::Builder::new().prefix("flotilla-s3-").tempdir()?;
    let config = format!(
        "[coordinator]\ndata_roots = [\"{}\", \"s3://flotilla-test/\"]\n\
         [object_store.s3]\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n",
        dir.path().display(),
        s3.port
    );
    let cluster = Cluster::standalone(ClusterOptions {
        executors: 2,
        tpch: None,
        config: Some(config),
        data_dir: Some(dir.path().to_path_buf()),
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    client
        .simple_query(
            "CREATE EXTERNAL TABLE people (id BIGINT, name VARCHAR, age INT) STORED AS CSV \
             LOCATION 's3://flotilla-test/people/' OPTIONS ('format.has_header' 'true')",
        )
        .await?;
    let before = cluster.tasks_by_executor(&client).await?;
    let rows = simple_rows(&client, "select count(*), sum(age) from people").await?;
    assert_eq!(
        rows,
        vec![vec![Some("3".to_string()), Some("76".to_string())]]
    );
    let after = cluster.tasks_by_executor(&client).await?;
    let busy = after
        .iter()
        .zip(&before)
        .filter(|((_, a), (_, b))| a > b)
        .count();
    assert!(busy >= 1, "no executor scanned S3: {before:?} -> {after:?}");

    let err = client
        .simple_query("CREATE EXTERNAL TABLE other STORED AS CSV LOCATION 's3://elsewhere/x/'")
        .await
        .expect_err("bucket outside the data roots");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    Ok(())
}

/// Deletes a bucket and everything in it (signed requests, through boto3,
/// which moto brings).
fn delete_bucket(port: u16, bucket: &str) -> Result<()> {
    let script = format!(
        "import boto3\n\
         s3 = boto3.resource('s3', endpoint_url='http://127.0.0.1:{port}', region_name='us-east-1',\n\
                             aws_access_key_id='test', aws_secret_access_key='test')\n\
         b = s3.Bucket('{bucket}')\n\
         b.objects.all().delete()\n\
         b.delete()\n"
    );
    let output = Command::new("python3").args(["-c", &script]).output()?;
    if !output.status.success() {
        bail!(
            "deleting bucket {bucket} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

const TPCH_TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// TPC-H Parquet in a real S3-compatible server answers the 22 queries as the
/// same files on local disk do; a bucket that vanishes while a query reads it
/// fails that query with a clear error, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_in_s3_answers_as_local_files_and_a_vanished_bucket_fails_clearly() -> Result<()> {
    let s3 = start_s3().await?;
    let dir = tempfile::Builder::new().prefix("flotilla-s3-").tempdir()?;
    let config = format!(
        "[coordinator]\ndata_roots = [\"{}\", \"s3://tpch/\"]\n\
         [object_store.s3]\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
         access_key_id = \"test\"\nsecret_access_key = \"test\"\nallow_http = true\n",
        dir.path().display(),
        s3.port
    );
    // The cluster generates (or finds) SF0.1 locally; the same files go to S3.
    let cluster = Cluster::standalone(ClusterOptions {
        executors: 2,
        tpch: Some(0.1),
        config: Some(config),
        data_dir: Some(dir.path().to_path_buf()),
        ..ClusterOptions::default()
    })?;
    cluster.wait_executors(2, Duration::from_secs(60)).await?;
    let local = dir.path().join("tpch").join("sf0.1");
    put(s3.port, "/tpch", b"").await?;
    for table in TPCH_TABLES {
        for entry in std::fs::read_dir(local.join(table))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .context("file name")?
                .to_string_lossy()
                .to_string();
            let key = format!("/tpch/{table}/{name}");
            put(s3.port, &key, &std::fs::read(&path)?).await?;
        }
    }
    let client = cluster.client().await?;
    for table in TPCH_TABLES {
        client
            .simple_query(&format!(
                "CREATE EXTERNAL TABLE s3_{table} STORED AS PARQUET LOCATION 's3://tpch/{table}/'"
            ))
            .await?;
    }
    for n in 1..=22 {
        let sql = tests::chaos::tpch_query(n)?;
        let mut s3_sql = sql.clone();
        for table in TPCH_TABLES {
            s3_sql = replace_table(&s3_sql, table, &format!("s3_{table}"));
        }
        let expected = tests::chaos::tpch_answer(0.1, n)?;
        let rows = simple_rows(&client, &s3_sql)
            .await
            .with_context(|| format!("q{n:02} over s3://"))?;
        tests::answers::compare(&expected, &rows).with_context(|| format!("q{n:02} over s3://"))?;
    }

    // The bucket vanishes between a query's planning (its files listed) and
    // its execution (over Flight SQL, GetFlightInfo then DoGet): the executors
    // cannot read the files, and the query ends with a clear error.
    let channel = tonic::transport::Channel::from_shared(format!(
        "http://127.0.0.1:{}",
        cluster.flight_port
    ))?
    .connect()
    .await?;
    let mut flight = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    flight.handshake("flotilla", "").await?;
    let info = flight
        .execute("select sum(l_quantity) from s3_lineitem".to_string(), None)
        .await?;
    delete_bucket(s3.port, "tpch")?;
    let ticket = info.endpoint[0].ticket.clone().context("no ticket")?;
    let outcome = async {
        let mut stream = flight.do_get(ticket).await?;
        while let Some(batch) = futures::StreamExt::next(&mut stream).await {
            batch?;
        }
        Ok::<_, arrow_flight::error::FlightError>(())
    }
    .await;
    let status = match outcome {
        Err(arrow_flight::error::FlightError::Tonic(status)) => status,
        other => bail!("reading a vanished bucket gave {other:?}"),
    };
    let state = status
        .metadata()
        .get("x-sqlstate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    anyhow::ensure!(
        state.as_deref() == Some("58030") && status.message().contains("tpch"),
        "not a clear error: {state:?} {}",
        status.message()
    );
    // The same connection's next statement and the server still work.
    let rows = simple_rows(&client, "select count(*) from nation").await?;
    assert_eq!(rows, vec![vec![Some("25".to_string())]]);
    let err = client
        .simple_query("select sum(length(n_comment)) from s3_nation")
        .await
        .expect_err("a table whose bucket is gone");
    let state = sqlstate(&err);
    anyhow::ensure!(
        state.as_deref() == Some("58030"),
        "a gone bucket gave {state:?}: {err:?}"
    );
    Ok(())
}

/// `sql` with every whole-word occurrence of `table` replaced by `by`.
fn replace_table(sql: &str, table: &str, by: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(table) {
        let before = rest[..at].chars().last();
        let after = rest[at + table.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        if word(before) || word(after) {
            out.push_str(table);
        } else {
            out.push_str(by);
        }
        rest = &rest[at + table.len()..];
    }
    out.push_str(rest);
    out
}
