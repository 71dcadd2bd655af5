//! MQTT over WebSocket: `GET /mqtt` with subprotocol `mqtt` (MQTT 5 §6, MQTT 3.1.1 §6).
//! Each binary WebSocket message carries MQTT bytes; [`WsStream`] turns the message stream
//! into the byte stream the gateway's connection handler reads and writes, so WebSocket
//! clients get exactly the same MQTT as TCP and TLS clients.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ApiState;

pub(crate) async fn upgrade(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(mqtt) = state.mqtt.clone() else {
        return (StatusCode::NOT_FOUND, "MQTT over WebSocket is not enabled").into_response();
    };
    ws.protocols(["mqtt"])
        .on_upgrade(move |socket| async move { mqtt.serve(WsStream::new(socket), peer).await })
}

/// A WebSocket as a byte stream: reads concatenate binary messages, each write is one binary
/// message. Text messages are ignored; a close frame or the end of the socket is end of file.
pub(crate) struct WsStream {
    socket: WebSocket,
    /// The rest of the last binary message not yet read.
    pending: Bytes,
}

impl WsStream {
    pub(crate) fn new(socket: WebSocket) -> Self {
        Self {
            socket,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for WsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                // Pings are answered by the WebSocket layer; MQTT is never sent as text.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut socket = Pin::new(&mut self.socket);
        ready!(socket.as_mut().poll_ready(cx)).map_err(io::Error::other)?;
        socket
            .start_send(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
