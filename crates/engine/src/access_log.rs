//! The access log (`accessLog`): one line per HTTP request and one per layer-4 connection at its
//! close, as JSON or in the combined log format, written by a background thread.
//!
//! Connections never wait for the disk: a line goes into a bounded queue ([`QUEUE`] lines) with
//! `try_send`; when the queue is full the line is dropped and counted ([`AccessLog::dropped`]),
//! and the drops are reported once per episode. `reopen()` makes the writer reopen its file
//! (log rotation).

use crate::events::{Event, EventSink, LogLevel};
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Lines that may wait for the writer.
pub const QUEUE: usize = 4096;
/// How often the writer takes the queued lines (lines reach the file within this).
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Combined,
}

/// `accessLog` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogOptions {
    /// A file path, or `-` for standard output.
    pub path: String,
    pub format: Format,
}

/// One HTTP request, as the front end saw it.
#[derive(Debug, Default)]
pub struct HttpInfo {
    pub method: String,
    pub path: String,
    pub host: String,
    pub referer: String,
    pub user_agent: String,
    pub backend: Option<String>,
}

struct Shared {
    dropped: AtomicU64,
    /// Drops since the last report (reported once per episode).
    dropping: AtomicBool,
    reopen: AtomicBool,
}

pub struct AccessLog {
    tx: SyncSender<String>,
    format: Format,
    shared: Arc<Shared>,
    events: Arc<dyn EventSink>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").field("format", &self.format).field("dropped", &self.dropped()).finish()
    }
}

impl AccessLog {
    /// Starts the writer thread. The file is opened by the thread (a FIFO without a reader
    /// blocks there, not here).
    pub fn start(o: &AccessLogOptions, events: Arc<dyn EventSink>) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            dropping: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
        });
        let path = o.path.clone();
        let writer_shared = shared.clone();
        let writer_events = events.clone();
        std::thread::Builder::new()
            .name("smartproxy-access-log".into())
            .spawn(move || write_lines(&path, rx, &writer_shared, &*writer_events))?;
        Ok(AccessLog { tx, format: o.format, shared, events })
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The writer reopens its file before the next line (after a rotation moved it away).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }

    fn push(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {
                if self.shared.dropping.swap(false, Ordering::Relaxed) {
                    let n = self.dropped();
                    self.events.emit(Event::Log {
                        route: None,
                        client: None,
                        level: LogLevel::Warn,
                        message: format!("access log: the writer caught up; {n} lines dropped so far"),
                    });
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.shared.dropping.swap(true, Ordering::Relaxed) {
                    self.events.emit(Event::Log {
                        route: None,
                        client: None,
                        level: LogLevel::Warn,
                        message: "access log: the writer is behind (slow or blocked output); dropping lines".into(),
                    });
                }
            }
        }
    }

    /// An HTTP request that ended.
    #[allow(clippy::too_many_arguments)]
    pub fn http(
        &self,
        client: IpAddr,
        route: Option<&str>,
        info: &HttpInfo,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        duration: Duration,
    ) {
        let now = crate::metrics::now_ms();
        let line = match self.format {
            Format::Json => {
                let mut j = Json::new(256);
                j.str("time", &iso8601(now));
                j.str("type", "http");
                j.display("client", client);
                j.opt_str("route", route);
                j.str("host", &info.host);
                j.str("method", &info.method);
                j.str("path", &info.path);
                j.num("status", status);
                j.num("bytesIn", bytes_in);
                j.num("bytesOut", bytes_out);
                j.num("durationMs", duration.as_secs_f64() * 1000.0);
                j.opt_str("backend", info.backend.as_deref());
                j.end()
            }
            Format::Combined => format!(
                "{client} - - [{}] \"{} {} HTTP/1.1\" {status} {bytes_out} \"{}\" \"{}\" {:.3} \"{}\" \"{}\"",
                clf_time(now),
                quoted(&info.method),
                quoted(&info.path),
                quoted(or_dash(&info.referer)),
                quoted(or_dash(&info.user_agent)),
                duration.as_secs_f64(),
                quoted(route.unwrap_or("-")),
                quoted(info.backend.as_deref().unwrap_or("-")),
            ),
        };
        self.push(line);
    }

    /// A layer-4 connection that closed.
    #[allow(clippy::too_many_arguments)]
    pub fn connection(
        &self,
        client: IpAddr,
        route: Option<&str>,
        target: Option<String>,
        bytes_in: u64,
        bytes_out: u64,
        duration: Duration,
        termination: &str,
    ) {
        let now = crate::metrics::now_ms();
        let line = match self.format {
            Format::Json => {
                let mut j = Json::new(200);
                j.str("time", &iso8601(now));
                j.str("type", "tcp");
                j.display("client", client);
                j.opt_str("route", route);
                j.opt_str("target", target.as_deref());
                j.num("bytesIn", bytes_in);
                j.num("bytesOut", bytes_out);
                j.num("durationMs", duration.as_secs_f64() * 1000.0);
                j.str("termination", termination);
                j.end()
            }
            Format::Combined => format!(
                "{client} - - [{}] \"TCP {}\" - {bytes_out} \"-\" \"-\" {:.3} \"{}\" \"{}\" in={bytes_in} end={termination}",
                clf_time(now),
                quoted(target.as_deref().unwrap_or("-")),
                duration.as_secs_f64(),
                quoted(route.unwrap_or("-")),
                quoted(target.as_deref().unwrap_or("-")),
            ),
        };
        self.push(line);
    }
}

/// A JSON object written straight into its line (no value tree: one allocation per line).
struct Json(String);

impl Json {
    fn new(cap: usize) -> Json {
        Json(String::with_capacity(cap))
    }

    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        self.0.push('"');
        self.0.push_str(k);
        self.0.push_str("\":");
    }

    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        self.0.push('"');
        for c in v.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = std::fmt::Write::write_fmt(&mut self.0, format_args!("\\u{:04x}", c as u32));
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => {
                self.key(k);
                self.0.push_str("null");
            }
        }
    }

    fn num(&mut self, k: &str, v: impl std::fmt::Display) {
        self.key(k);
        let _ = std::fmt::Write::write_fmt(&mut self.0, format_args!("{v}"));
    }

    fn display(&mut self, k: &str, v: impl std::fmt::Display) {
        self.str(k, &v.to_string());
    }

    fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// A value inside double quotes of the combined format: quotes, backslashes and control
/// characters escaped (as nginx does), so a client cannot forge lines.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\x22"),
            '\\' => out.push_str("\\x5C"),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn parts(ms: u64) -> (i64, u32, u32, u64, u64, u64, u64) {
    let secs = ms / 1000;
    let (y, m, d) = civil((secs / 86_400) as i64);
    let t = secs % 86_400;
    (y, m, d, t / 3600, t / 60 % 60, t % 60, ms % 1000)
}

/// `2026-12-05T05:40:00.123Z`
pub fn iso8601(ms: u64) -> String {
    let (y, m, d, hh, mm, ss, milli) = parts(ms);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
}

/// `05/Dec/2026:05:40:00 +0000`
pub fn clf_time(ms: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, hh, mm, ss, _) = parts(ms);
    format!("{d:02}/{}/{y:04}:{hh:02}:{mm:02}:{ss:02} +0000", MONTHS[(m - 1) as usize])
}

enum Out {
    Stdout,
    File(std::io::BufWriter<std::fs::File>),
    /// Could not open: lines are dropped until a reopen succeeds.
    None,
}

fn open(path: &str, events: &dyn EventSink) -> Out {
    if path == "-" {
        return Out::Stdout;
    }
    match std::fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Out::File(std::io::BufWriter::with_capacity(64 * 1024, f)),
        Err(e) => {
            events.emit(Event::Log {
                route: None,
                client: None,
                level: LogLevel::Error,
                message: format!("access log: cannot open {path}: {e}"),
            });
            Out::None
        }
    }
}

fn write_lines(path: &str, rx: Receiver<String>, shared: &Shared, events: &dyn EventSink) {
    let mut out = open(path, events);
    let write = |out: &mut Out, mut l: String| {
        l.push('\n');
        let r = match out {
            Out::Stdout => std::io::stdout().lock().write_all(l.as_bytes()),
            Out::File(f) => f.write_all(l.as_bytes()),
            Out::None => Ok(()),
        };
        if r.is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    // The writer polls its queue every few milliseconds instead of blocking on it: a producer
    // then never has to wake it (no futex call per line on the request path).
    loop {
        if shared.reopen.swap(false, Ordering::Relaxed) {
            if let Out::File(f) = &mut out {
                let _ = f.flush();
            }
            out = open(path, events);
        }
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(l) => {
                    write(&mut out, l);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if let Out::File(f) = &mut out {
                        let _ = f.flush();
                    }
                    return;
                }
            }
        }
        if wrote {
            if let Out::File(f) = &mut out {
                let _ = f.flush();
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        // 2026-12-05T05:40:00.123Z
        let ms = 1_796_449_200_123;
        assert_eq!(iso8601(ms), "2026-12-05T05:40:00.123Z");
        assert_eq!(clf_time(ms), "05/Dec/2026:05:40:00 +0000");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_lines_are_valid_json_whatever_the_values() {
        let mut j = Json::new(16);
        j.str("a", "q\"b\\c\nd\u{1}é");
        j.opt_str("n", None);
        j.num("x", 1.5);
        j.num("y", 7u16);
        let line = j.end();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["a"], "q\"b\\c\nd\u{1}é");
        assert!(v["n"].is_null());
        assert_eq!(v["x"], 1.5);
        assert_eq!(v["y"], 7);
    }

    #[test]
    fn combined_values_cannot_forge_lines() {
        assert_eq!(quoted("a\"b\\c\nd"), "a\\x22b\\x5Cc\\x0Ad");
    }
}
