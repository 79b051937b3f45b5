//! One connection to the hypervisor's control channel, shared by every
//! container the shim serves.
//!
//! The hypervisor serves a few clients at once (a socket each), far
//! fewer than containers, so the shim keeps one connection and
//! multiplexes it: one request at a time (a request line,
//! then the next line that is not a pushed record is its answer), while a
//! reader thread hands every pushed record (`console`, `event`,
//! `lines_dropped`: [`Response::is_pushed`]) to a callback, whatever
//! request is in flight. Requests are typed ([`Request`]'s `Display` is the
//! line) and answers read with serde into [`Response`]; nothing here builds
//! or picks at JSON by hand.
//!
//! A request that gets no answer within the timeout leaves the two sides
//! out of step (a late answer would be taken for the next request's), so
//! the connection is closed: the callback hears [`Pushed::Closed`] and a
//! new connection starts afresh.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi::control::{CHUNK_MAX, ErrorKind, LINE_MAX, Reason, Request, Response};

/// What the reader hands the callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// A record the hypervisor pushed.
    Record(Response),
    /// The connection ended (the hypervisor went away, or it was closed
    /// after a request went unanswered); nothing more comes.
    Closed,
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The hypervisor refused it: its sentence, kind and reason.
    Refused { sentence: String, kind: ErrorKind, reason: Option<Reason> },
    /// The connection is gone (or went now).
    Closed,
    /// No answer in time; the connection was closed.
    TimedOut,
    /// The request line is longer than the hypervisor reads.
    TooLong,
    /// Writing the request failed.
    Io(String),
    /// No connection could be made (why).
    Connect(String),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { sentence, .. } => write!(f, "the hypervisor refused: {sentence}"),
            Self::Closed => f.write_str("the hypervisor's control channel closed"),
            Self::TimedOut => f.write_str("the hypervisor did not answer in time; the control connection was closed"),
            Self::TooLong => write!(f, "the request is longer than the {LINE_MAX} bytes the control channel reads"),
            Self::Io(e) => write!(f, "writing to the control channel: {e}"),
            Self::Connect(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ChannelError {}

/// The write half, the answers the reader passes on, and a way to close.
struct Inner {
    writer: Box<dyn Write + Send>,
    answers: Receiver<Response>,
}

/// A multiplexed connection; see the module doc.
pub struct Channel {
    /// Held for a whole request (or upload): one writer at a time.
    inner: Mutex<Inner>,
    closed: Arc<AtomicBool>,
    close: Box<dyn Fn() + Send + Sync>,
    timeout: Duration,
}

impl Channel {
    /// Starts the reader thread on `reader`; `close` shuts the connection
    /// (both halves) so the reader ends; `on_pushed` gets every pushed
    /// record, then [`Pushed::Closed`] once.
    pub fn new(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        close: impl Fn() + Send + Sync + 'static,
        timeout: Duration,
        on_pushed: impl FnMut(Pushed) + Send + 'static,
    ) -> Channel {
        let (tx, rx) = mpsc::channel();
        let closed = Arc::new(AtomicBool::new(false));
        let closed2 = closed.clone();
        std::thread::Builder::new()
            .name("hive-reader".into())
            .spawn(move || read_loop(reader, tx, closed2, on_pushed))
            .expect("spawning the control channel's reader");
        Channel { inner: Mutex::new(Inner { writer: Box::new(writer), answers: rx }), closed, close: Box::new(close), timeout }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` and returns its answer; an `error` answer is
    /// [`ChannelError::Refused`].
    pub fn request(&self, req: &Request<'_>) -> Result<Response, ChannelError> {
        let mut inner = self.lock();
        self.exchange(&mut inner, req)
    }

    /// Sends `req`, which gets no answer (`wait`, `image-data`).
    pub fn notify(&self, req: &Request<'_>) -> Result<(), ChannelError> {
        let mut inner = self.lock();
        self.send(&mut inner, req)
    }

    /// Uploads `data` as image `name` (`image-begin`, `image-data`...,
    /// `image-end`, with no other request between) and returns the
    /// `image-end` answer's digest.
    pub fn upload(&self, name: &str, data: &[u8]) -> Result<Option<String>, ChannelError> {
        let mut inner = self.lock();
        self.exchange(&mut inner, &Request::ImageBegin { name, len: data.len() })?;
        for chunk in data.chunks(CHUNK_MAX) {
            self.send(&mut inner, &Request::ImageData(chunk.to_vec()))?;
        }
        match self.exchange(&mut inner, &Request::ImageEnd)? {
            Response::Image { digest, .. } => Ok(digest),
            other => Err(ChannelError::Refused {
                sentence: format!("image-end was answered {other:?}"),
                kind: ErrorKind::Unspecified,
                reason: None,
            }),
        }
    }

    /// Closes the connection (the reader then says [`Pushed::Closed`]).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        (self.close)();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave the stream half written in a
        // way a later request could not see: poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, inner: &mut Inner, req: &Request<'_>) -> Result<(), ChannelError> {
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        let mut line = req.to_string();
        if line.len() > LINE_MAX {
            return Err(ChannelError::TooLong);
        }
        line.push('\n');
        inner.writer.write_all(line.as_bytes()).and_then(|()| inner.writer.flush()).map_err(|e| {
            self.close();
            ChannelError::Io(e.to_string())
        })
    }

    fn exchange(&self, inner: &mut Inner, req: &Request<'_>) -> Result<Response, ChannelError> {
        // An answer nobody waited for would be taken for this one's.
        while inner.answers.try_recv().is_ok() {}
        self.send(inner, req)?;
        match inner.answers.recv_timeout(self.timeout) {
            Ok(Response::Error { error, kind, reason }) => Err(ChannelError::Refused { sentence: error, kind, reason }),
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => {
                self.close();
                Err(ChannelError::TimedOut)
            }
            Err(RecvTimeoutError::Disconnected) => Err(ChannelError::Closed),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_loop(reader: impl Read, answers: Sender<Response>, closed: Arc<AtomicBool>, mut on_pushed: impl FnMut(Pushed)) {
    // Lines are bounded: a pushed console line is at most a console
    // write, an answer at most a few KiB per guest; cap what one line may
    // take so a broken peer cannot make the shim grow without end.
    const LINE_CAP: u64 = 64 << 20;
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.by_ref().take(LINE_CAP).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Response>(line) {
            Ok(r) if r.is_pushed() => on_pushed(Pushed::Record(r)),
            Ok(r) => {
                let _ = answers.send(r);
            }
            Err(e) => log::warn!("control channel: not a line of the protocol ({e}): {line:.200}"),
        }
    }
    closed.store(true, Ordering::Release);
    drop(answers);
    on_pushed(Pushed::Closed);
}

#[cfg(test)]
mod tests;
