//! Stopping: SIGTERM closes WebSockets and exits promptly.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sigterm_closes_websockets_and_exits_promptly() {
    let mut server = common::Server::start(&common::test_projects());
    let client = server.client("testbed").await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(client.socket().await);
    }
    let took = server.signal_and_wait("TERM");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    for socket in &mut sockets {
        let message = loop {
            match tokio::time::timeout(Duration::from_secs(2), socket.next())
                .await
                .expect("socket told")
            {
                Some(Ok(Message::Ping(_) | Message::Text(_))) => continue,
                other => break other,
            }
        };
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001, "going away")
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert!(server.log().contains("stopping"), "{}", server.log());
}
