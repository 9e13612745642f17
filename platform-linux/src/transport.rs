//! Node-to-node transport: core frames over mutual TLS.
//!
//! Every node listens on its cluster address and dials every other node; each direction of a
//! pair is one TLS connection that carries frames one way. A connection with a client
//! certificate from this cluster's CA carries frames; one without a certificate may only send a
//! single join request (the joiner has no certificate yet). Anything malformed is logged with
//! the peer's address and name, the connection is dropped, and the daemon keeps serving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::codec::{self, HEADER_LEN};
use tandem_core::{ClusterId, NodeId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::join::{JoinReply, JoinRequest};
use crate::pki;

/// Frames queued for one peer beyond this are dropped (Raft and pings tolerate loss).
const LINK_QUEUE: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JOIN_REQUEST: u64 = 64 * 1024;

/// A bidirectional byte stream (a TLS connection of either side).
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ByteStream for T {}

/// What the network hands to the event loop.
pub enum Inbound {
    Frame {
        bytes: Vec<u8>,
        peer: String,
    },
    /// A member opened a replication stream for `volume` (its first frame said so).
    Replication {
        from: NodeId,
        volume: u64,
        peer: String,
        stream: Box<dyn ByteStream>,
    },
    Join {
        request: JoinRequest,
        reply: oneshot::Sender<JoinReply>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {addr}: address already in use (another tandem daemon or program holds it)")]
    InUse { addr: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Binds the cluster port with a clear error when it is taken.
pub async fn listen(addr: &str) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            TransportError::InUse { addr: addr.into() }
        } else {
            TransportError::Listen {
                addr: addr.into(),
                source,
            }
        }
    })
}

/// Who we are, for checking what arrives.
#[derive(Clone, Copy)]
pub struct LocalIdentity {
    pub cluster: ClusterId,
    pub node: NodeId,
}

/// Accepts peers forever.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    me: LocalIdentity,
    inbound: mpsc::Sender<Inbound>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            continue;
        };
        let (acceptor, inbound) = (acceptor.clone(), inbound.clone());
        tokio::spawn(async move { serve_connection(stream, addr, acceptor, me, inbound).await });
    }
}

async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    me: LocalIdentity,
    inbound: mpsc::Sender<Inbound>,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Err(_) => return tracing::warn!("refused connection from {addr}: TLS handshake timed out"),
        Ok(Err(error)) => {
            return tracing::warn!("refused connection from {addr}: {}", describe_io(&error))
        }
        Ok(Ok(tls)) => tls,
    };
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first().cloned());
    let Some(certificate) = certificate else {
        return serve_join(tls, addr, inbound).await;
    };
    let peer = match pki::peer_identity(certificate.as_ref()) {
        Ok(identity) if identity.cluster == me.cluster => {
            format!("{} ({addr})", identity.node_name)
        }
        Ok(identity) => {
            return tracing::warn!(
            "refused connection from {addr}: its certificate names cluster {}, this is cluster {}",
            identity.cluster,
            me.cluster
        )
        }
        Err(error) => return tracing::warn!("refused connection from {addr}: {error}"),
    };
    read_frames(tls, peer, me, inbound).await;
}

/// Reads one whole cluster frame, checked; `Ok(None)` when the peer closed.
async fn read_frame<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    peer: &str,
    me: LocalIdentity,
) -> Result<Option<(Vec<u8>, codec::Frame)>, ()> {
    let mut header = [0u8; HEADER_LEN];
    if stream.read_exact(&mut header).await.is_err() {
        tracing::debug!("connection from {peer} closed");
        return Ok(None);
    }
    let total = codec::frame_len(&header).map_err(|error| malformed(peer, &error))?;
    let mut bytes = header.to_vec();
    bytes.resize(total, 0);
    if stream.read_exact(&mut bytes[HEADER_LEN..]).await.is_err() {
        tracing::debug!("connection from {peer} closed mid-frame");
        return Ok(None);
    }
    let frame =
        codec::decode(me.cluster, me.node, &bytes).map_err(|error| malformed(peer, &error))?;
    Ok(Some((bytes, frame)))
}

async fn read_frames<S: ByteStream + 'static>(
    mut stream: S,
    peer: String,
    me: LocalIdentity,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut first = true;
    while let Ok(Some((bytes, frame))) = read_frame(&mut stream, &peer, me).await {
        if let codec::PeerMessage::OpenReplication { volume } = frame.message {
            if !first {
                return tracing::warn!(
                    "{peer} asked for replication mid-stream; dropping the connection"
                );
            }
            let event = Inbound::Replication {
                from: frame.from,
                volume,
                peer,
                stream: Box::new(stream),
            };
            let _ = inbound.send(event).await;
            return;
        }
        first = false;
        let event = Inbound::Frame {
            bytes,
            peer: peer.clone(),
        };
        if inbound.send(event).await.is_err() {
            return;
        }
    }
}

/// Dials `peer` and turns the connection into a replication stream for `volume`.
pub async fn open_replication(
    peer: &PeerAddress,
    tls: Arc<rustls::ClientConfig>,
    cluster: ClusterId,
    from: NodeId,
    to: NodeId,
    volume: u64,
) -> Result<Box<dyn ByteStream>, String> {
    let connector = TlsConnector::from(tls);
    let mut stream = connect(peer, &connector).await?;
    let frame = codec::Frame {
        from,
        to,
        message: codec::PeerMessage::OpenReplication { volume },
    };
    stream
        .write_all(&codec::encode(cluster, &frame))
        .await
        .map_err(|error| error.to_string())?;
    stream.flush().await.map_err(|error| error.to_string())?;
    Ok(Box::new(stream))
}

fn malformed(peer: &str, error: &codec::FrameError) {
    tracing::warn!("malformed frame from {peer}: {error}; dropping the connection");
}

async fn serve_join<S>(stream: S, addr: SocketAddr, inbound: mpsc::Sender<Inbound>)
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_JOIN_REQUEST));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<JoinRequest>(&line) {
        Ok(request) => {
            tracing::info!("join request from {addr} for node {:?}", request.name);
            let (reply, answer) = oneshot::channel();
            if inbound
                .send(Inbound::Join { request, reply })
                .await
                .is_err()
            {
                return;
            }
            answer
                .await
                .unwrap_or_else(|_| JoinReply::refused("the daemon dropped the request"))
        }
        Err(error) => {
            tracing::warn!("refused connection from {addr}: no client certificate and not a join request ({error})");
            JoinReply::refused("expected a join request")
        }
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
    let _ = write.shutdown().await;
}

/// Turns a TLS-level I/O error into words an operator understands.
pub fn describe_io(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => pki::explain_tls_error(tls),
        None => error.to_string(),
    }
}

/// A peer we dial: where, and under which certificate name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    pub name: String,
    pub addr: String,
}

struct Link {
    address: PeerAddress,
    queue: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

/// Outbound connections, one task per peer.
pub struct Links {
    tls: Arc<rustls::ClientConfig>,
    links: HashMap<NodeId, Link>,
}

impl Links {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Links {
        Links {
            tls,
            links: HashMap::new(),
        }
    }

    /// Makes the set of links match `peers`: new peers are dialled, gone ones hung up.
    pub fn sync(&mut self, peers: &HashMap<NodeId, PeerAddress>) {
        self.links.retain(|id, link| {
            let keep = peers.get(id) == Some(&link.address);
            if !keep {
                link.task.abort();
            }
            keep
        });
        for (&id, address) in peers {
            if !self.links.contains_key(&id) {
                let (queue, receiver) = mpsc::channel(LINK_QUEUE);
                let task = tokio::spawn(run_link(address.clone(), self.tls.clone(), receiver));
                let address = address.clone();
                self.links.insert(
                    id,
                    Link {
                        address,
                        queue,
                        task,
                    },
                );
            }
        }
    }

    /// The nodes linked now, with their addresses.
    pub fn linked(&self) -> Vec<(NodeId, PeerAddress)> {
        self.links
            .iter()
            .map(|(&id, link)| (id, link.address.clone()))
            .collect()
    }

    /// Queues frame bytes for `to`; dropped when the peer is unknown or its queue is full.
    pub fn send(&self, to: NodeId, bytes: Vec<u8>) {
        if let Some(link) = self.links.get(&to) {
            let _ = link.queue.try_send(bytes);
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

async fn run_link(
    peer: PeerAddress,
    tls: Arc<rustls::ClientConfig>,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let connector = TlsConnector::from(tls);
    let mut backoff = Duration::from_millis(50);
    let mut last_error = String::new();
    loop {
        match connect(&peer, &connector).await {
            Ok(mut stream) => {
                tracing::info!("connected to {} at {}", peer.name, peer.addr);
                last_error.clear();
                backoff = Duration::from_millis(50);
                while let Some(bytes) = queue.recv().await {
                    // TLS may keep the tail of a record buffered until flushed.
                    let idle = queue.is_empty();
                    let sent = stream.write_all(&bytes).await.is_ok();
                    if !sent || (idle && stream.flush().await.is_err()) {
                        break;
                    }
                }
                tracing::info!("lost the connection to {} at {}", peer.name, peer.addr);
            }
            Err(error) => {
                if error != last_error {
                    tracing::warn!("cannot reach {} at {}: {error}", peer.name, peer.addr);
                    last_error = error;
                }
                while queue.try_recv().is_ok() {}
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

async fn connect(
    peer: &PeerAddress,
    connector: &TlsConnector,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&peer.addr))
        .await
        .map_err(|_| "connection timed out".to_string())?
        .map_err(|error| error.to_string())?;
    let _ = tcp.set_nodelay(true);
    let handshake = connector.connect(pki::server_name(&peer.name), tcp);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|error| describe_io(&error))
}
