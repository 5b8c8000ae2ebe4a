//! A bounded queue whose memory grows with what it holds.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates and initialises all `n` slots when it is made:
//! the recorder's event queue and the request log's queue (16,384 slots each) cost about 9 MB of
//! resident memory on a server that has not answered a call yet. This queue is std's list-based
//! channel (allocated in small blocks as messages arrive, freed as they leave) with the bound kept
//! by a counter, so a full queue still refuses rather than grows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SendError, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

/// A queue holding at most `capacity` messages.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    let len = Arc::new(AtomicUsize::new(0));
    (Sender { tx, len: len.clone(), capacity }, Receiver { rx, len })
}

/// The sending side; cheap to clone.
pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    len: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), len: self.len.clone(), capacity: self.capacity }
    }
}

/// How often a sender waiting for room looks again.
const RETRY: Duration = Duration::from_millis(2);

impl<T> Sender<T> {
    /// Queue `v` now, or hand it back: `Full` when the queue holds `capacity` messages,
    /// `Disconnected` when the receiver is gone.
    pub fn try_send(&self, v: T) -> Result<(), TrySendError<T>> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(v));
        }
        self.tx.send(v).map_err(|SendError(v)| {
            self.len.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(v)
        })
    }

    /// Queue `v`, waiting up to `timeout` for room; hands it back if there was none in time.
    pub fn send_timeout(&self, mut v: T, timeout: Duration) -> Result<(), TrySendError<T>> {
        let start = Instant::now();
        loop {
            match self.try_send(v) {
                Err(TrySendError::Full(back)) if start.elapsed() < timeout => {
                    v = back;
                    std::thread::sleep(RETRY);
                }
                other => return other,
            }
        }
    }

    /// Queue `v`, waiting as long as it takes for room; fails only when the receiver is gone.
    pub fn send(&self, mut v: T) -> Result<(), SendError<T>> {
        loop {
            match self.try_send(v) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    v = back;
                    std::thread::sleep(RETRY);
                }
                Err(TrySendError::Disconnected(back)) => return Err(SendError(back)),
            }
        }
    }

    /// Messages queued and not yet received.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving side.
pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    len: Arc<AtomicUsize>,
}

impl<T> Receiver<T> {
    fn took(&self, v: T) -> T {
        self.len.fetch_sub(1, Ordering::AcqRel);
        v
    }

    /// A queued message, if there is one.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv().map(|v| self.took(v))
    }

    /// The next message, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).map(|v| self.took(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_takes_again_once_drained() {
        let (tx, rx) = bounded(3);
        for i in 0..3 {
            tx.try_send(i).expect("room");
        }
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        assert_eq!(tx.len(), 3);
        assert_eq!(rx.try_recv(), Ok(0));
        tx.try_send(3).expect("room again");
        let got: Vec<i32> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, vec![1, 2, 3]);
        assert!(tx.is_empty());
    }

    #[test]
    fn a_gone_receiver_hands_the_message_back_and_frees_its_slot() {
        let (tx, rx) = bounded(1);
        drop(rx);
        assert!(matches!(tx.try_send(7), Err(TrySendError::Disconnected(7))));
        assert_eq!(tx.len(), 0);
        assert!(tx.send(8).is_err());
    }

    #[test]
    fn a_waiting_sender_gets_room_when_the_receiver_takes() {
        let (tx, rx) = bounded(1);
        tx.try_send(1).expect("room");
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            rx.recv_timeout(Duration::from_secs(5)).expect("first");
            rx.recv_timeout(Duration::from_secs(5)).expect("second")
        });
        tx.send_timeout(2, Duration::from_secs(5)).expect("room within the timeout");
        assert_eq!(t.join().expect("receiver thread"), 2);
        let (tx, _rx) = bounded(1);
        tx.try_send(1).expect("room");
        assert!(matches!(tx.send_timeout(2, Duration::from_millis(10)), Err(TrySendError::Full(2))));
    }

    #[test]
    fn many_senders_never_overfill() {
        let (tx, rx) = bounded(100);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let tx = tx.clone();
                std::thread::spawn(move || (0..1000).filter(|i| tx.try_send(*i).is_ok()).count())
            })
            .collect();
        let sent: usize = threads.into_iter().map(|t| t.join().expect("sender")).sum();
        assert_eq!(sent, 100);
        assert_eq!(std::iter::from_fn(|| rx.try_recv().ok()).count(), 100);
    }
}
