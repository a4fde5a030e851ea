//! A raw Postgres v3 protocol client for inputs no driver will send (bytes that
//! are not UTF-8, unknown statement names).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawConnection {
    stream: TcpStream,
    /// What the server sent during start-up, ReadyForQuery included.
    pub startup: Vec<Message>,
}

/// One backend message: its type byte and body.
#[derive(Debug)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// `(name, value)` of a ParameterStatus message.
    pub fn parameter(&self) -> Option<(String, String)> {
        if self.tag != b'S' {
            return None;
        }
        let mut parts = self.body.split(|b| *b == 0);
        let name = String::from_utf8_lossy(parts.next()?).to_string();
        let value = String::from_utf8_lossy(parts.next()?).to_string();
        Some((name, value))
    }

    /// The transaction status byte of a ReadyForQuery message.
    pub fn ready_status(&self) -> Option<u8> {
        (self.tag == b'Z')
            .then(|| self.body.first().copied())
            .flatten()
    }

    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        if self.tag != b'E' {
            return None;
        }
        let mut fields = self.body.split(|b| *b == 0);
        fields.find_map(|f| {
            if f.first() == Some(&b'C') {
                Some(String::from_utf8_lossy(&f[1..]).to_string())
            } else {
                None
            }
        })
    }
}

/// What a slow client got: when its first row came (from the start of the
/// read), how many bytes it read, and whether the answer ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct SlowRead {
    pub first_row: Option<Duration>,
    pub bytes: u64,
    pub ended: bool,
}

impl RawConnection {
    /// Connects and completes start-up (no authentication).
    pub async fn connect(port: u16) -> Result<Self> {
        Ok(Self::connect_after(port, &[]).await?.0)
    }

    /// Sends each negotiation request (SSLRequest 80877103, GSSENCRequest
    /// 80877104) and reads its one-byte answer, then completes start-up.
    pub async fn connect_after(port: u16, requests: &[i32]) -> Result<(Self, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut answers = Vec::new();
        for code in requests {
            let mut msg = BytesMut::new();
            msg.put_i32(8);
            msg.put_i32(*code);
            stream.write_all(&msg).await?;
            answers.push(stream.read_u8().await?);
        }
        let mut conn = Self {
            stream,
            startup: Vec::new(),
        };
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in [("user", "flotilla"), ("database", "flotilla")] {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut msg = BytesMut::new();
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(&body);
        conn.stream.write_all(&msg).await?;
        conn.startup = conn.until_ready().await?;
        Ok((conn, answers))
    }

    /// Sends a message with a type byte.
    pub async fn send(&mut self, tag: u8, body: &[u8]) -> Result<()> {
        let mut msg = BytesMut::with_capacity(body.len() + 5);
        msg.put_u8(tag);
        msg.put_i32(body.len() as i32 + 4);
        msg.put_slice(body);
        self.stream.write_all(&msg).await?;
        Ok(())
    }

    /// Sends a simple Query whose text is `sql` as raw bytes.
    pub async fn query_bytes(&mut self, sql: &[u8]) -> Result<Vec<Message>> {
        let mut body = sql.to_vec();
        body.push(0);
        self.send(b'Q', &body).await?;
        self.until_ready().await
    }

    /// Reads messages up to and including ReadyForQuery.
    pub async fn until_ready(&mut self) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.read())
                .await
                .context("no ReadyForQuery within 30 s")??;
            let done = msg.tag == b'Z';
            out.push(msg);
            if done {
                return Ok(out);
            }
        }
    }

    /// Sends a simple Query without waiting for its answer.
    pub async fn send_query(&mut self, sql: &str) -> Result<()> {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body).await
    }

    /// Reads the answer in progress no faster than `bytes_per_second`, for
    /// `duration` or until it ends: a slow client. Returns when the first
    /// DataRow arrived (if one did) and the bytes read; the connection may be
    /// left mid-answer.
    pub async fn read_slowly(
        &mut self,
        bytes_per_second: u64,
        duration: Duration,
    ) -> Result<SlowRead> {
        let started = tokio::time::Instant::now();
        let mut read = SlowRead::default();
        while started.elapsed() < duration {
            let msg = tokio::time::timeout(duration, self.read())
                .await
                .context("the answer stalled")??;
            read.bytes += msg.body.len() as u64 + 5;
            match msg.tag {
                b'D' if read.first_row.is_none() => read.first_row = Some(started.elapsed()),
                b'E' => bail!("the query failed: {:?}", msg.sqlstate()),
                b'Z' => {
                    read.ended = true;
                    break;
                }
                _ => {}
            }
            let due = Duration::from_secs_f64(read.bytes as f64 / bytes_per_second as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(read)
    }

    async fn read(&mut self) -> Result<Message> {
        let tag = self.stream.read_u8().await?;
        let len = self.stream.read_i32().await?;
        if !(4..=64 * 1024 * 1024).contains(&len) {
            bail!("bad message length {len}");
        }
        let mut body = vec![0; len as usize - 4];
        self.stream.read_exact(&mut body).await?;
        Ok(Message { tag, body })
    }
}
