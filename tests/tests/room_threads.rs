//! Room threads (`--room-threads`): a room's connections run on one thread, which owns their
//! sockets. Whatever the number of threads, meetings behave the same, and nothing a client
//! sends while its socket moves there is lost.

use balint_e2e::{TestServer, YClient, DEADLINE};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yrs::{Doc, Text, Transact};

async fn server(threads: usize) -> TestServer {
    TestServer::start_with(|c| c.room_threads = Some(threads)).await
}

/// A client frame (RFC 6455 §5.2): final, binary, masked with `mask`.
fn masked_binary_frame(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0x82];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A stock client whose first edit leaves in the same packet as its handshake, before the
/// server has answered: the edit reaches the room, whichever thread the socket moves to.
#[tokio::test]
async fn an_edit_sent_with_the_handshake_is_not_lost() {
    for threads in [0, 1, 2] {
        let server = server(threads).await;
        let room = server.create_room(json!({})).await;
        let text = format!("sent with the handshake, {threads} room threads");
        let doc = Doc::with_client_id(41);
        let notes = doc.get_or_insert_text("notes");
        let update = {
            let mut txn = doc.transact_mut();
            notes.insert(&mut txn, 0, &text);
            txn.encode_update_v1()
        };
        let path = format!("/ws/{}?token={}&name=ada", room.id, room.invite_token);
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            server.addr
        )
        .into_bytes();
        request.extend(masked_binary_frame(&balint_proto::sync::encode_update(&update), [7, 1, 2, 9]));
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(&request).await.unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut head)).await.unwrap().unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "{threads} room threads");

        let url = server.ws_url(&room.id, &room.invite_token, "ben");
        let mut witness = YClient::connect(&url).await.unwrap();
        witness.wait_until(|c| c.notes() == text).await.unwrap();
        drop(tcp);
        server.stop().await;
    }
}

/// Rooms spread over fewer threads than there are rooms, or none: each room's members see
/// their own board, and only theirs.
#[tokio::test]
async fn rooms_sharing_a_thread_keep_their_boards_apart() {
    for threads in [0, 1, 3] {
        let server = server(threads).await;
        let mut rooms = Vec::new();
        for r in 0..4 {
            let room = server.create_room(json!({})).await;
            let url = |name: &str| server.ws_url(&room.id, &room.invite_token, name);
            let mut a = YClient::connect(&url("ada")).await.unwrap();
            let b = YClient::connect(&url("ben")).await.unwrap();
            a.type_text(&format!("room {r}. ")).await.unwrap();
            rooms.push((room, a, b));
        }
        for (r, (room, a, b)) in rooms.iter_mut().enumerate() {
            let first = format!("room {r}. ");
            b.wait_until(|c| c.notes() == first).await.unwrap();
            b.type_text(&format!("reply {r}.")).await.unwrap();
            let both = format!("room {r}. reply {r}.");
            a.wait_until(|c| c.notes() == both).await.unwrap();
            b.wait_until(|c| c.notes() == both).await.unwrap();
            // A late joiner gets its room's board whole, and nothing of the others.
            let late = YClient::connect(&server.ws_url(&room.id, &room.invite_token, "cy")).await.unwrap();
            assert_eq!(late.notes(), both, "{threads} room threads");
        }
        server.stop().await;
    }
}
