//! One browser connection, whatever carries it (a WebSocket today; Server-
//! Sent Events or a device bridge tomorrow): what the client is sent first
//! (its configuration and the UI values it sees), the session events a new
//! connection causes (`sessionRestored`, `pageStartup`), its frames run one
//! after the other with their replies in order behind the pushes queued
//! before them, and the session told when it leaves.
//!
//! A transport reads messages and writes frames; it drives a
//! [`Connection`] and never repeats any of this.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, error};

use super::commands;
use super::events;
use super::state::{Caller, Runtime};
use crate::metrics::METRICS;
use crate::project::Project;
use crate::protocol::{self, ClientFrame, Push, Rejection};
use crate::session::{Frame, Session};

/// Frames of one connection waiting for their turn; they run in order.
const PENDING_FRAMES: usize = 64;

/// Pushed frames (and replies) waiting to be written to one connection. A
/// browser that falls this far behind misses pushes (it gets current UI
/// state again on reconnect) rather than holding memory for everyone.
const PUSH_QUEUE: usize = 256;

/// A frame the client sent, parsed or refused.
pub type Incoming = Box<Result<ClientFrame, Rejection>>;

/// Frames for the transport to write to the client, in order: pushes and
/// replies. Closed when the session ends (once the running frame's reply
/// is in it).
pub type Outgoing = mpsc::Receiver<Frame>;

/// A live connection of a session. Dropping it disconnects; frames already
/// received still run to the end (their replies have nowhere to go): a
/// command the user sent is never half-done, and a re-send after
/// reconnecting is answered from its record.
pub struct Connection {
    session: Arc<Session>,
    id: u64,
    frames: mpsc::Sender<Incoming>,
    frame_limit: usize,
}

impl Connection {
    /// Connects a client to its session: queues its configuration and UI
    /// snapshot, runs the events a new connection causes, and starts the
    /// worker that runs its frames. `page` is the page the client shows.
    pub async fn open(
        runtime: Arc<Runtime>,
        project: Arc<Project>,
        session: Arc<Session>,
        caller: Caller,
        page: Option<String>,
    ) -> (Connection, Outgoing) {
        let (push_tx, pushes) = mpsc::channel::<Frame>(PUSH_QUEUE);
        let _ = push_tx.try_send(
            Push::Config {
                keystrokes: &project.settings.keystrokes,
            }
            .to_frame(),
        );
        let snapshot = runtime.ui_snapshot(&session);
        if !snapshot.is_empty() {
            let _ = push_tx.try_send(Push::Ui { set: &snapshot }.to_frame());
        }
        drop(snapshot);
        // Replies share the queue through a weak sender: the queue still
        // closes when the session drops its sender (the session ended).
        let replies = push_tx.downgrade();
        let id = session.connect(push_tx);
        METRICS.websocket_opened();
        Box::pin(opened(
            &runtime,
            &project,
            &session,
            caller.tab.as_deref(),
            page.as_deref(),
        ))
        .await;
        let (frames, pending) = mpsc::channel::<Incoming>(PENDING_FRAMES);
        let frame_limit = project.settings.max_frame_bytes;
        tokio::spawn(run_frames(
            runtime,
            project.name.clone(),
            session.clone(),
            replies,
            pending,
            caller,
        ));
        let connection = Connection {
            session,
            id,
            frames,
            frame_limit,
        };
        (connection, pushes)
    }

    /// Parses a text message from the client under the project's size limit.
    pub fn parse(&self, text: &str) -> Incoming {
        let parsed = protocol::parse_frame(text, self.frame_limit);
        if let Err(rejection) = &parsed {
            debug!(
                session = self.session.log_id(),
                "rejected frame: {}", rejection.reason
            );
        }
        Box::new(parsed)
    }

    /// Where received frames go to be run in order. Bounded: a transport
    /// that finds it full stops reading until there is room.
    pub fn frames(&self) -> &mpsc::Sender<Incoming> {
        &self.frames
    }

    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.session.disconnect(self.id);
        METRICS.websocket_closed();
    }
}

/// A client connected: `sessionRestored` when the session came back from
/// the store, `pageStartup` when the tab is new to the session.
async fn opened(
    runtime: &Arc<Runtime>,
    project: &Arc<Project>,
    session: &Arc<Session>,
    tab: Option<&str>,
    page: Option<&str>,
) {
    if let Some(kind) = session.take_restored() {
        events::session_restored(runtime, project, session, kind).await;
    }
    let (Some(tab), Some(page)) = (tab, page) else {
        runtime.points.send_snapshot(session);
        return;
    };
    // The client's page if the user may see it, else the start page.
    let Some(page) = [page, project.settings.start.as_str()]
        .into_iter()
        .find(|page| runtime.may_show_page(project, session, page))
    else {
        return;
    };
    let new_tab = session.with_state(|state| state.show_in_tab(tab, page).is_none());
    runtime.persist(session);
    runtime.points.send_snapshot(session);
    if new_tab {
        events::page_startup(runtime, project, session, page, tab).await;
    }
}

/// Runs the connection's frames one after the other, so that a slow
/// handler never stops the transport from answering pings or noticing a
/// close; each reply goes into the outgoing queue behind what was pushed
/// before it.
async fn run_frames(
    runtime: Arc<Runtime>,
    project: String,
    session: Arc<Session>,
    replies: mpsc::WeakSender<Frame>,
    mut pending: mpsc::Receiver<Incoming>,
    caller: Caller,
) {
    while let Some(frame) = pending.recv().await {
        // Held while the frame runs, so that its reply gets out even when
        // the frame ends the session (the queue closes once it is sent).
        // None: the connection is closing, nobody would read the reply.
        let Some(replies) = replies.upgrade() else {
            break;
        };
        // Looked up per frame: a hot reload replaces the project meanwhile.
        let Some(project) = runtime.project(&project) else {
            break;
        };
        let answer = match *frame {
            Ok(frame) => {
                Box::pin(commands::run_frame(
                    &runtime,
                    project,
                    session.clone(),
                    frame,
                    &caller,
                ))
                .await
            }
            Err(rejection) => Err(rejection),
        };
        let text = match answer {
            Ok(reply) => serde_json::to_string(&reply),
            Err(rejection) => serde_json::to_string(&rejection),
        };
        let text = match text {
            Ok(text) => text,
            Err(error) => {
                error!("could not serialize a reply: {error}");
                continue;
            }
        };
        // Waits for room in the queue: a reply is never dropped while the
        // connection lives.
        if replies.send(Frame::from(text)).await.is_err() {
            break;
        }
    }
}
