//! One connection to one server (TCP `host:port`, or a unix socket `unix:/path` as nginx
//! writes it), with connect/read/write timeouts.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::protocol::{read_reply, read_stats, wire_len, write_command};
use crate::{CmdResult, Command, StoreError};

/// Pipelining bound: write at most this many commands / bytes before reading their replies,
/// so neither side's socket buffer can fill up and deadlock the exchange.
const PIPELINE_MAX_COMMANDS: usize = 256;
const PIPELINE_MAX_BYTES: usize = 4 << 20;

/// Timeouts for one server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(2),
        }
    }
}

/// Either kind of stream, read and written through the same buffers.
type Reader = BufReader<Box<dyn Read + Send>>;
type Writer = BufWriter<Box<dyn Write + Send>>;

pub struct Connection {
    server: String,
    reader: Reader,
    writer: Writer,
    /// Set once an error left the stream in an unknown state; the pool then drops it.
    pub broken: bool,
}

impl Connection {
    pub fn open(server: &str, t: Timeouts) -> Result<Connection, StoreError> {
        let (reader, writer) = match server.strip_prefix("unix:") {
            Some(path) => open_unix(server, path, t)?,
            None => open_tcp(server, t)?,
        };
        Ok(Connection {
            server: server.to_string(),
            reader: BufReader::with_capacity(64 << 10, reader),
            writer: BufWriter::with_capacity(64 << 10, writer),
            broken: false,
        })
    }

    /// Runs `cmds` pipelined; one result per command. After a connection-breaking error the
    /// remaining commands get that error too (their effect on the server is unknown).
    pub fn run_batch(&mut self, cmds: &[Command]) -> Vec<CmdResult> {
        let mut results = Vec::with_capacity(cmds.len());
        let mut start = 0;
        while start < cmds.len() {
            let mut bytes = 0;
            let mut end = start;
            while end < cmds.len()
                && end - start < PIPELINE_MAX_COMMANDS
                && (end == start || bytes < PIPELINE_MAX_BYTES)
            {
                bytes += wire_len(&cmds[end]);
                end += 1;
            }
            let written = cmds[start..end]
                .iter()
                .try_for_each(|c| write_command(c, &mut self.writer))
                .and_then(|_| self.writer.flush());
            if let Err(e) = written {
                self.broken = true;
                let err = StoreError::from_io(&self.server, &e);
                results.extend(cmds[start..].iter().map(|_| Err(err.clone())));
                return results;
            }
            for cmd in &cmds[start..end] {
                let r = read_reply(&mut self.reader, cmd, &self.server);
                if let Err(e) = &r
                    && e.breaks_connection()
                {
                    self.broken = true;
                    results.extend(cmds[results.len()..].iter().map(|_| Err(e.clone())));
                    return results;
                }
                results.push(r);
            }
            start = end;
        }
        results
    }

    /// `stats [group]` as name/value pairs.
    pub fn stats(&mut self, group: Option<&str>) -> Result<Vec<(String, String)>, StoreError> {
        let line = match group {
            Some(g) => format!("stats {g}\r\n"),
            None => "stats\r\n".to_string(),
        };
        let r = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|_| self.writer.flush())
            .map_err(|e| StoreError::from_io(&self.server, &e))
            .and_then(|_| read_stats(&mut self.reader, &self.server));
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Every key the server holds, from `lru_crawler metadump all` (memcached 1.5+; not
    /// through twemproxy). Keys arrive URI-encoded and are decoded here.
    pub fn metadump(&mut self) -> Result<Vec<Vec<u8>>, StoreError> {
        let r = (|| {
            for _ in 0..100 {
                self.writer
                    .write_all(b"lru_crawler metadump all\r\n")
                    .and_then(|_| self.writer.flush())
                    .map_err(|e| StoreError::from_io(&self.server, &e))?;
                match crate::protocol::read_metadump(&mut self.reader, &self.server)? {
                    Some(keys) => return Ok(keys),
                    // BUSY: another crawl is running; it ends on its own.
                    None => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
            Err(StoreError::Server("lru_crawler stayed busy".into()))
        })();
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// `version`.
    pub fn version(&mut self) -> Result<String, StoreError> {
        let r = self
            .writer
            .write_all(b"version\r\n")
            .and_then(|_| self.writer.flush())
            .map_err(|e| StoreError::from_io(&self.server, &e))
            .and_then(|_| crate::protocol::read_line(&mut self.reader, &self.server));
        match r {
            Ok(line) if line.starts_with(b"VERSION ") => {
                Ok(String::from_utf8_lossy(&line[8..]).to_string())
            }
            Ok(line) => {
                self.broken = true;
                Err(StoreError::protocol(
                    &self.server,
                    &format!("bad version reply {:?}", String::from_utf8_lossy(&line)),
                ))
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }
}

/// A connected stream, split into its read and write halves.
type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

fn open_tcp(server: &str, t: Timeouts) -> Result<Halves, StoreError> {
    let io_err = |e: std::io::Error| StoreError::from_io(server, &e);
    let addrs = server.to_socket_addrs().map_err(io_err)?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, t.connect) {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(io_err)?;
                stream.set_read_timeout(Some(t.io)).map_err(io_err)?;
                stream.set_write_timeout(Some(t.io)).map_err(io_err)?;
                let writer = stream.try_clone().map_err(io_err)?;
                return Ok((Box::new(stream), Box::new(writer)));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => io_err(e),
        None => StoreError::Io {
            server: server.to_string(),
            message: "address resolved to nothing".into(),
        },
    })
}

fn open_unix(server: &str, path: &str, t: Timeouts) -> Result<Halves, StoreError> {
    let io_err = |e: std::io::Error| StoreError::from_io(server, &e);
    // A local socket connects at once or not at all: no connect timeout is needed.
    let stream = UnixStream::connect(path).map_err(io_err)?;
    stream.set_read_timeout(Some(t.io)).map_err(io_err)?;
    stream.set_write_timeout(Some(t.io)).map_err(io_err)?;
    let writer = stream.try_clone().map_err(io_err)?;
    Ok((Box::new(stream), Box::new(writer)))
}
