//! Admission control: how many queries run on the executors at once.
//!
//! A query that reads table data takes a running slot before its first attempt
//! and holds it until its stream ends or is dropped. With every slot taken it
//! waits in a bounded queue; with the queue full too it is refused at once
//! ([`QueryError::TooManyQueries`], SQLSTATE 53300), so a burst of clients
//! cannot pile unbounded work on the cluster. The same limits apply per user
//! when configured.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sql::config::AdmissionConfig;
use tokio::sync::Notify;

use crate::error::{QueryError, Result};

/// Counts, as `flotilla.admission` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    pub running: usize,
    pub queued: usize,
    /// The most queries that ever ran at once.
    pub running_peak: usize,
    /// Queries refused because the queue was full.
    pub rejected: u64,
}

#[derive(Debug, Default)]
struct State {
    counts: AdmissionCounts,
    /// Per user: (running, queued).
    users: HashMap<String, (usize, usize)>,
}

/// The coordinator's admission control.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    state: Mutex<State>,
    freed: Notify,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            freed: Notify::new(),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    pub fn counts(&self) -> AdmissionCounts {
        self.lock().counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn can_run(&self, state: &State, user: &str) -> bool {
        let user_running = state.users.get(user).map_or(0, |u| u.0);
        state.counts.running < self.config.running_max
            && (self.config.user_running_max == 0 || user_running < self.config.user_running_max)
    }

    fn start(&self, state: &mut State, user: &str) {
        state.counts.running += 1;
        state.counts.running_peak = state.counts.running_peak.max(state.counts.running);
        state.users.entry(user.to_string()).or_default().0 += 1;
    }

    /// A running slot for `user`: at once, after waiting in the queue, or an
    /// error at once when the queue is full. Dropping the future while it waits
    /// leaves the queue.
    pub async fn admit(self: &Arc<Self>, user: &str) -> Result<Permit> {
        {
            let mut state = self.lock();
            if self.can_run(&state, user) {
                self.start(&mut state, user);
                return Ok(self.permit(user));
            }
            let user_queued = state.users.get(user).map_or(0, |u| u.1);
            let full = state.counts.queued >= self.config.queued_max;
            let user_full =
                self.config.user_queued_max != 0 && user_queued >= self.config.user_queued_max;
            if full || user_full {
                state.counts.rejected += 1;
                return Err(QueryError::TooManyQueries {
                    running: state.counts.running,
                    queued: state.counts.queued,
                    scope: if full { "the cluster" } else { "this user" },
                });
            }
            state.counts.queued += 1;
            state.users.entry(user.to_string()).or_default().1 += 1;
        }
        let mut waiting = Waiting {
            admission: Arc::clone(self),
            user: user.to_string(),
            left: false,
        };
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot freed meanwhile still wakes us.
            freed.as_mut().enable();
            {
                let mut state = self.lock();
                if self.can_run(&state, user) {
                    waiting.leave(&mut state);
                    self.start(&mut state, user);
                    drop(state);
                    return Ok(self.permit(user));
                }
            }
            freed.await;
        }
    }

    fn permit(self: &Arc<Self>, user: &str) -> Permit {
        Permit {
            admission: Arc::clone(self),
            user: user.to_string(),
        }
    }
}

/// A queued query; leaves the queue when dropped, if it has not already.
struct Waiting {
    admission: Arc<Admission>,
    user: String,
    left: bool,
}

impl Waiting {
    fn leave(&mut self, state: &mut State) {
        if self.left {
            return;
        }
        self.left = true;
        state.counts.queued -= 1;
        if let Some(user) = state.users.get_mut(&self.user) {
            user.1 -= 1;
            if *user == (0, 0) {
                state.users.remove(&self.user);
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let admission = Arc::clone(&self.admission);
        let mut state = admission.lock();
        self.leave(&mut state);
    }
}

/// A running slot; freed when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    user: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut state = self.admission.lock();
            state.counts.running -= 1;
            if let Some(user) = state.users.get_mut(&self.user) {
                user.0 -= 1;
                if *user == (0, 0) {
                    state.users.remove(&self.user);
                }
            }
        }
        self.admission.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission(running_max: usize, queued_max: usize) -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionConfig {
            running_max,
            queued_max,
            user_running_max: 0,
            user_queued_max: 0,
        }))
    }

    #[tokio::test]
    async fn overflow_is_refused_and_the_queue_drains() {
        let admission = admission(2, 1);
        let a = admission.admit("u").await.unwrap();
        let _b = admission.admit("u").await.unwrap();
        let queued = tokio::spawn({
            let admission = Arc::clone(&admission);
            async move { admission.admit("u").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(admission.counts().queued, 1);
        let refused = admission.admit("u").await.unwrap_err();
        assert!(matches!(refused, QueryError::TooManyQueries { .. }));
        drop(a);
        queued.await.unwrap().unwrap();
        let counts = admission.counts();
        assert_eq!((counts.running, counts.queued), (1, 0));
        assert_eq!(counts.running_peak, 2);
        assert_eq!(counts.rejected, 1);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let admission = admission(1, 4);
        let _a = admission.admit("u").await.unwrap();
        let waiting = admission.admit("u");
        assert!(tokio::time::timeout(Duration::from_millis(20), waiting)
            .await
            .is_err());
        assert_eq!(admission.counts().queued, 0);
    }

    #[tokio::test]
    async fn per_user_limits() {
        let admission = Arc::new(Admission::new(AdmissionConfig {
            running_max: 10,
            queued_max: 10,
            user_running_max: 1,
            user_queued_max: 0,
        }));
        let _a = admission.admit("alice").await.unwrap();
        let _b = admission.admit("bob").await.unwrap();
        let queued = admission.admit("alice");
        assert!(tokio::time::timeout(Duration::from_millis(20), queued)
            .await
            .is_err());
    }
}
