//! Where log lines go: stderr, written in batches by a background thread.
//!
//! Every command logs a line. Writing it from the worker that answers the
//! command cost a `write(2)` per command, and handing it to a writer thread
//! per line (tracing-appender) cost a thread wake-up per command instead
//! (docs/performance.md). Here a line is appended to a buffer under a
//! mutex; the writer thread writes the buffer every [`FLUSH_INTERVAL`].
//! Nothing is dropped: past [`MAX_BUFFERED`] bytes the caller writes the
//! batch itself (and waits for stderr, as it would unbuffered). At exit the
//! [`FlushGuard`] writes what is left.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a line may wait before it is written: short enough that a
/// person tailing the log sees it at once.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Bytes buffered before a caller writes them itself (stderr is blocked or
/// slow: a full pipe, a slow terminal).
const MAX_BUFFERED: usize = 1 << 20;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Held while a batch is written, so batches leave in order.
    output: Mutex<Box<dyn Write + Send>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these cannot leave the data inconsistent (a
    // byte buffer, the stderr handle).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn append(&self, bytes: &[u8]) {
        let full = {
            let mut buffer = lock(&self.buffer);
            buffer.extend_from_slice(bytes);
            buffer.len() >= MAX_BUFFERED
        };
        if full {
            self.flush();
        }
    }

    fn flush(&self) {
        let mut output = lock(&self.output);
        let batch = std::mem::take(&mut *lock(&self.buffer));
        if !batch.is_empty() {
            // Nowhere to report a failing stderr.
            let _ = output.write_all(&batch);
        }
    }
}

/// A handle that appends to the log buffer; what `tracing_subscriber`'s
/// formatter writes each line to.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes what is left when dropped; keep it until the program ends.
pub struct FlushGuard(Arc<Shared>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Starts the writer thread.
pub fn stderr() -> (LogWriter, FlushGuard) {
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(64 << 10)),
        output: Mutex::new(Box::new(std::io::stderr())),
    });
    let flusher = shared.clone();
    let started = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_INTERVAL);
                flusher.flush();
            }
        });
    if let Err(error) = started {
        // Lines are still written, by the callers once the buffer fills
        // and at exit; say why they are late.
        eprintln!("switchboard: the log writer thread did not start: {error}");
    }
    (LogWriter(shared.clone()), FlushGuard(shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_wait_in_order_and_a_full_buffer_is_written_not_dropped() {
        let sink = Sink::default();
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Vec::new()),
            output: Mutex::new(Box::new(sink.clone())),
        });
        let mut writer = LogWriter(shared.clone());
        writer.write_all(b"one\n").unwrap();
        writer.write_all(b"two\n").unwrap();
        assert!(lock(&sink.0).is_empty(), "buffered until the next flush");
        shared.flush();
        assert_eq!(&*lock(&sink.0), b"one\ntwo\n");
        writer.write_all(&vec![b'x'; MAX_BUFFERED]).unwrap();
        assert_eq!(lock(&sink.0).len(), 8 + MAX_BUFFERED, "the caller wrote it");
        writer.write_all(b"last\n").unwrap();
        drop(FlushGuard(shared));
        assert!(lock(&sink.0).ends_with(b"xlast\n"), "written at exit");
    }
}
