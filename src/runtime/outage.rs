//! Cluster mode while NATS is unreachable, and after: which writes a node
//! catches up when NATS returns.
//!
//! Shared state is never written behind: a command or submission that
//! needs a claim is refused (`delivery`), and a run whose `!` variables or
//! answer could not be stored is undone in memory and answered "not done".
//! What is caught up is each session's own state (properties, rollback
//! values, pages), kept in this node's memory meanwhile: written again
//! when NATS is back, if the session's panel is still connected here —
//! one that moved to another node meanwhile has a newer record there,
//! which must not be overwritten with this node's.

use tracing::{info, warn};

use super::state::Runtime;

impl Runtime {
    /// Remembers a session whose record could not be written.
    pub(super) fn remember_unsaved(&self, session: &str) {
        self.unsaved_sessions.insert(session.to_string(), ());
    }

    /// Writes the remembered sessions once NATS is reachable again (from
    /// the idle sweep: at most one sweep interval after it returns).
    pub(super) async fn catch_up_after_outage(&self) {
        if self.unsaved_sessions.is_empty() || self.store.health().connected != Some(true) {
            return;
        }
        let ids: Vec<String> = self
            .unsaved_sessions
            .iter()
            .map(|entry| entry.key().clone())
            .collect();
        let Some(runtime) = self.arc() else {
            return;
        };
        // Store writes block: off the async threads.
        let _ = crate::script::run_off_async(move || {
            let (mut written, mut skipped) = (0, 0);
            for id in ids {
                runtime.unsaved_sessions.remove(&id);
                match runtime.sessions.by_id(&id) {
                    Some(session) if session.is_connected() && !session.has_ended() => {
                        runtime.persist(&session);
                        written += 1;
                    }
                    _ => skipped += 1,
                }
            }
            if skipped > 0 {
                warn!("after the NATS outage, {skipped} session(s) no longer connected here were not written: their panels moved on");
            }
            if written > 0 {
                info!("caught up after the NATS outage: wrote {written} session(s) held here");
            }
        })
        .await;
    }
}
