//! Following the change log: one thread per instance that keeps the snapshot
//! up to date with changes other instances commit.
//!
//! The order is the one PostgreSQL's LISTEN/NOTIFY needs to lose nothing:
//! open the wake-up source (LISTEN takes effect at once), then read the log,
//! then wait for a wake-up or the poll interval, then read again. A lost
//! wake-up connection is reopened and followed by a full catch-up, since
//! wake-ups sent while it was down are gone; the poll bounds what a silently
//! lost wake-up can cost. Every successful read confirms freshness
//! ([`KeyStore::staleness`]); nothing else does, so an instance that cannot
//! reach its store grows stale and the proxy fails closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::{Error, Followed, KeyStore};

/// What the follower reports, for logs. Failures are reported once when they
/// start and once when they end, not on every poll.
#[derive(Debug)]
pub enum FollowEvent<'a> {
    /// Changes from other instances were applied (or the snapshot reloaded).
    Applied(Followed),
    /// Reading the log failed; the instance is growing stale.
    Failing(&'a Error),
    /// Reading the log works again after failures.
    Recovered(Followed),
    /// The wake-up connection was lost (or could not be opened).
    WatcherLost(&'a Error),
    /// The wake-up connection is open again.
    WatcherBack,
    /// Something happened to the store that the operator must hear of,
    /// though nothing failed (a removed store file written back).
    Notice(&'a str),
}

/// The follower thread; stopped and joined on drop.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following `ks`'s store, reading the log at least every `poll`.
    pub fn spawn(
        ks: Arc<KeyStore>,
        poll: Duration,
        on_event: impl Fn(FollowEvent<'_>) + Send + 'static,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scopegate-follow".into())
            .spawn(move || run(&ks, poll, &flag, &on_event))?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            // It notices within one poll interval.
            let _ = t.join();
        }
    }
}

fn run(ks: &KeyStore, poll: Duration, stop: &AtomicBool, on_event: &dyn Fn(FollowEvent<'_>)) {
    let mut watcher = None;
    let mut watcher_ok = true;
    let mut follow_ok = true;
    while !stop.load(Ordering::Acquire) {
        if watcher.is_none() {
            match ks.watcher() {
                Ok(w) => {
                    watcher = Some(w);
                    if !watcher_ok {
                        ks.fresh.reconnects.fetch_add(1, Ordering::Relaxed);
                        on_event(FollowEvent::WatcherBack);
                    }
                    watcher_ok = true;
                }
                Err(e) => {
                    if watcher_ok {
                        on_event(FollowEvent::WatcherLost(&e));
                    }
                    watcher_ok = false;
                }
            }
        }
        match ks.follow() {
            Ok(f) if !follow_ok => {
                follow_ok = true;
                on_event(FollowEvent::Recovered(f));
            }
            Ok(f) if f.applied > 0 || f.reloaded => on_event(FollowEvent::Applied(f)),
            Ok(_) => {}
            Err(e) => {
                if follow_ok {
                    on_event(FollowEvent::Failing(&e));
                }
                follow_ok = false;
            }
        }
        for notice in ks.store_notices() {
            on_event(FollowEvent::Notice(&notice));
        }
        match watcher.as_mut() {
            Some(w) => {
                if let Err(e) = w.wait(poll) {
                    watcher = None;
                    let e = Error::from(e);
                    if watcher_ok {
                        on_event(FollowEvent::WatcherLost(&e));
                    }
                    watcher_ok = false;
                }
            }
            None => std::thread::sleep(poll),
        }
    }
}
