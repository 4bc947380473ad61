//! Rate-limited warnings: one line a second per kind of trouble, with a count of the ones
//! left out. A store outage fails every request the same way (a dead server failed 10,000 a
//! second): each kind is logged once, then at most once a second while it lasts, the line
//! saying how many like it were not written (`... (and 47 more like it in the last 1 s)`).
//! Counts left over when the trouble stops are written by [`LogLimit::flush`] (the mount's
//! heartbeat calls it every 2 s).
//!
//! A kind is a short text naming what failed and how, without what varies from one
//! occurrence to the next when the cause is the same: the operation, the errno and
//! [`FsError::kind`] (for a store error the server and its failure, not the key).
//!
//! ```ignore
//! if let Some(omitted) = log_limit::global().admit(&kind) {
//!     warn!("{op} {path}: {error}{omitted}");
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::FsError;
use crate::sync::lock;

/// How often a line of one kind may be written.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Kinds remembered at most; past it, the ones with nothing left out are forgotten.
const MAX_KINDS: usize = 4096;

type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

pub struct LogLimit {
    window: Duration,
    clock: Clock,
    kinds: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    /// When the last line of this kind was written.
    logged: Instant,
    /// Occurrences not written since.
    omitted: u64,
}

/// What a line that is written adds: how many of its kind were left out before it, over how
/// long. Displays as nothing when none were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Omitted {
    pub count: u64,
    pub over: Duration,
}

impl fmt::Display for Omitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return Ok(());
        }
        let secs = self.over.as_secs_f64().round().max(1.0);
        write!(f, " (and {} more like it in the last {secs} s)", self.count)
    }
}

impl LogLimit {
    pub fn new(window: Duration) -> LogLimit {
        LogLimit::with_clock(window, Instant::now)
    }

    /// With a clock of the caller's (tests move it by hand).
    pub fn with_clock(
        window: Duration,
        clock: impl Fn() -> Instant + Send + Sync + 'static,
    ) -> LogLimit {
        LogLimit {
            window,
            clock: Box::new(clock),
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an occurrence of `kind` is to be written now: `Some` with what was left out
    /// before it, or `None` (counted, to be reported with the next line of its kind).
    pub fn admit(&self, kind: &str) -> Option<Omitted> {
        let now = (self.clock)();
        let mut kinds = lock(&self.kinds);
        if let Some(slot) = kinds.get_mut(kind) {
            let over = now.saturating_duration_since(slot.logged);
            if over < self.window {
                slot.omitted += 1;
                return None;
            }
            let omitted = Omitted {
                count: std::mem::take(&mut slot.omitted),
                over,
            };
            slot.logged = now;
            return Some(omitted);
        }
        if kinds.len() >= MAX_KINDS {
            kinds.retain(|_, s| s.omitted > 0);
        }
        let fresh = Omitted {
            count: 0,
            over: Duration::ZERO,
        };
        if kinds.len() >= MAX_KINDS {
            return Some(fresh); // every kind is busy: written, but not remembered
        }
        kinds.insert(
            kind.to_string(),
            Slot {
                logged: now,
                omitted: 0,
            },
        );
        Some(fresh)
    }

    /// The kinds whose window has passed with occurrences left out, and how many: their
    /// counts are reported now (and reset). Kinds quiet for a window are forgotten.
    pub fn take_overdue(&self) -> Vec<(String, Omitted)> {
        let now = (self.clock)();
        let mut kinds = lock(&self.kinds);
        let mut overdue = Vec::new();
        kinds.retain(|kind, slot| {
            let over = now.saturating_duration_since(slot.logged);
            if over < self.window {
                return true;
            }
            if slot.omitted == 0 {
                return false;
            }
            overdue.push((
                kind.clone(),
                Omitted {
                    count: std::mem::take(&mut slot.omitted),
                    over,
                },
            ));
            slot.logged = now;
            true
        });
        overdue.sort_by(|a, b| a.0.cmp(&b.0));
        overdue
    }

    /// Writes the counts [`Self::take_overdue`] finds, one warning per kind.
    pub fn flush(&self) {
        for (kind, omitted) in self.take_overdue() {
            let (count, secs) = (omitted.count, omitted.over.as_secs_f64().round().max(1.0));
            tracing::warn!("{count} more like \"{kind}\" in the last {secs} s");
        }
    }
}

/// The limiter every warning of this process goes through (a window of [`WINDOW`]).
pub fn global() -> &'static LogLimit {
    static GLOBAL: OnceLock<LogLimit> = OnceLock::new();
    GLOBAL.get_or_init(|| LogLimit::new(WINDOW))
}

impl FsError {
    /// What kind of trouble this is, for [`LogLimit`]: the message without what varies
    /// between occurrences of one cause. A store error is its server and failure (an outage
    /// fails every key alike); a full store is one kind; a missing or malformed record keeps
    /// its key (each is a problem of its own).
    pub fn kind(&self) -> String {
        match self {
            FsError::Store { source, .. } => source.to_string(),
            FsError::NoSpace { .. } => "store is full".to_string(),
            other => other.to_string(),
        }
    }
}

/// Writes a warning through the global limiter: `$kind` (a `&str` or `String`) names the
/// kind, the rest is the message (formatted only when written), followed by what was left out.
#[macro_export]
macro_rules! limited_warn {
    ($kind:expr, $($message:tt)+) => {
        if let Some(omitted) =
            $crate::log_limit::global().admit(::std::convert::AsRef::<str>::as_ref(&$kind))
        {
            ::tracing::warn!("{}{}", format_args!($($message)+), omitted);
        }
    };
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A limiter over a clock the test moves.
    fn limiter() -> (LogLimit, Arc<Mutex<Instant>>) {
        let now = Arc::new(Mutex::new(Instant::now()));
        let clock = now.clone();
        let limit = LogLimit::with_clock(Duration::from_secs(1), move || *lock(&clock));
        (limit, now)
    }

    fn advance(now: &Mutex<Instant>, ms: u64) {
        *lock(now) += Duration::from_millis(ms);
    }

    #[test]
    fn one_line_a_second_per_kind_with_the_count_left_out() {
        let (limit, now) = limiter();
        let first = limit.admit("read EIO: timed out").unwrap();
        assert_eq!(first.count, 0);
        assert_eq!(first.to_string(), "");
        for _ in 0..47 {
            advance(&now, 10);
            assert_eq!(limit.admit("read EIO: timed out"), None);
        }
        // Another kind is not held up by the first.
        assert!(limit.admit("lookup EIO: timed out").is_some());
        advance(&now, 600);
        let next = limit.admit("read EIO: timed out").unwrap();
        assert_eq!(next.count, 47);
        assert_eq!(next.over, Duration::from_millis(1070));
        assert_eq!(next.to_string(), " (and 47 more like it in the last 1 s)");
        // The count starts again.
        advance(&now, 10);
        assert_eq!(limit.admit("read EIO: timed out"), None);
        advance(&now, 2000);
        assert_eq!(limit.admit("read EIO: timed out").unwrap().count, 1);
    }

    #[test]
    fn counts_left_when_the_trouble_stops_are_flushed_once() {
        let (limit, now) = limiter();
        limit.admit("a").unwrap();
        limit.admit("b").unwrap();
        for _ in 0..5 {
            assert_eq!(limit.admit("a"), None);
        }
        assert!(
            limit.take_overdue().is_empty(),
            "not before the window ends"
        );
        advance(&now, 1500);
        let overdue = limit.take_overdue();
        assert_eq!(overdue.len(), 1, "{overdue:?}");
        assert_eq!(overdue[0].0, "a");
        assert_eq!(overdue[0].1.count, 5);
        advance(&now, 1500);
        assert!(limit.take_overdue().is_empty(), "reported once");
        // Forgotten once quiet: the next occurrence is written at once, with nothing before.
        assert_eq!(lock(&limit.kinds).len(), 0);
        assert_eq!(limit.admit("a").unwrap().count, 0);
    }

    #[test]
    fn the_table_of_kinds_stays_bounded() {
        let (limit, _now) = limiter();
        for i in 0..MAX_KINDS * 3 {
            limit.admit(&format!("kind {i}")).unwrap();
        }
        assert!(lock(&limit.kinds).len() <= MAX_KINDS);
    }

    #[test]
    fn a_store_error_is_one_kind_whatever_its_key() {
        let timeout = |key: &[u8]| {
            FsError::store(
                key,
                memfis_memcache::StoreError::Timeout {
                    server: "127.0.0.1:11211".into(),
                },
            )
        };
        assert_eq!(timeout(b"p/a").kind(), timeout(b"p/b").kind());
        assert_eq!(
            timeout(b"p/a").kind(),
            "timed out talking to 127.0.0.1:11211"
        );
        assert_ne!(
            FsError::missing(b"p%i1").kind(),
            FsError::missing(b"p%i2").kind()
        );
    }
}
