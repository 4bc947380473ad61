//! Idle connections to one server. A connection that saw an I/O, timeout or protocol error is
//! dropped, never reused; a new one is dialled on the next request, so a server that comes back
//! is used again without any action.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::connection::{Connection, Timeouts};
use crate::{CmdResult, Command, StoreError};

/// Idle connections kept per server; more may be open while busy.
const MAX_IDLE: usize = 16;

pub struct ServerPool {
    /// The address exactly as configured (`host:port`): also the text the hash ring uses.
    pub addr: String,
    timeouts: Timeouts,
    idle: Mutex<Vec<Connection>>,
    /// Connections that broke and dials that failed: each may mean the server restarted
    /// (and lost its items) before the next connection.
    interruptions: AtomicU64,
}

impl ServerPool {
    pub fn new(addr: &str, timeouts: Timeouts) -> ServerPool {
        ServerPool {
            addr: addr.to_string(),
            timeouts,
            idle: Mutex::new(Vec::new()),
            interruptions: AtomicU64::new(0),
        }
    }

    /// How many connections broke or could not be made so far.
    pub fn interruptions(&self) -> u64 {
        self.interruptions.load(Ordering::SeqCst)
    }

    /// Runs `f` on a pooled (or new) connection and returns it to the pool if still healthy.
    pub fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> Result<T, StoreError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Connection::open(&self.addr, self.timeouts).inspect_err(|_| {
                self.interruptions.fetch_add(1, Ordering::SeqCst);
            })?,
        };
        let out = f(&mut conn);
        if conn.broken {
            self.interruptions.fetch_add(1, Ordering::SeqCst);
            // The others idle since may be as dead (a server gone, a route cut): each would
            // cost a batch its timeout. New ones are dialled as needed.
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        } else {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        Ok(out)
    }

    pub fn run_batch(&self, cmds: &[Command]) -> Vec<CmdResult> {
        let results = match self.with_conn(|c| c.run_batch(cmds)) {
            Ok(results) => results,
            Err(e) => return cmds.iter().map(|_| Err(e.clone())).collect(),
        };
        // An idle connection the server closed (e.g. it restarted) fails on its first reply
        // with EOF/reset before the server could run anything: dial once more.
        if matches!(results.first(), Some(Err(StoreError::Io { .. }))) {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            // The retry runs on a new connection, perhaps to a server that restarted empty
            // since another thread confirmed the store: count it, so it is confirmed again.
            self.interruptions.fetch_add(1, Ordering::SeqCst);
            return match self.with_conn(|c| c.run_batch(cmds)) {
                Ok(results) => results,
                Err(e) => cmds.iter().map(|_| Err(e.clone())).collect(),
            };
        }
        results
    }
}
