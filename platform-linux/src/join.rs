//! Joining a cluster: the joiner's side of the protocol and the messages both sides speak.
//!
//! The joiner has no certificate yet, so it dials a member with TLS *without* a client
//! certificate and checks the member's certificate chain against the CA fingerprint inside
//! the token: the token authenticates the cluster to the joiner, and the token's secret
//! authenticates the joiner to the cluster. The member commits the new node through Raft, signs
//! the joiner's CSR, and answers with everything the joiner needs to start.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::{ClusterId, NodeId, Role};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pki;
use crate::token::JoinToken;

const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The joiner's request (one JSON line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    pub addr: String,
    pub site: Option<String>,
    pub witness: bool,
    pub csr_pem: String,
}

/// A node the joiner should dial until the replicated state reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
}

/// What a member hands a successful joiner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinGrant {
    pub cluster: ClusterId,
    pub node_id: NodeId,
    pub role: Role,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub node_cert_pem: String,
    pub peers: Vec<PeerEntry>,
}

/// The member's answer (one JSON line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinReply {
    pub outcome: Result<JoinGrant, String>,
}

impl JoinReply {
    pub fn refused(reason: impl Into<String>) -> JoinReply {
        JoinReply {
            outcome: Err(reason.into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable { peer: String, reason: String },
    #[error("peer {peer} is not a member of the cluster this token belongs to: {reason}")]
    WrongCluster { peer: String, reason: String },
    #[error("peer {peer} refused the join: {reason}")]
    Refused { peer: String, reason: String },
    #[error("peer {peer} answered something that is not a join reply: {reason}")]
    Protocol { peer: String, reason: String },
}

/// Asks the member at `peer` to admit us.
pub async fn request_join(
    peer: &str,
    token: &JoinToken,
    request: &JoinRequest,
) -> Result<JoinGrant, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        peer: peer.into(),
        reason,
    };
    let tls =
        pki::join_client_config(token.ca_fingerprint).map_err(|e| unreachable(e.to_string()))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(peer))
        .await
        .map_err(|_| unreachable("connection timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let mut stream = TlsConnector::from(tls)
        .connect(pki::server_name("join"), tcp)
        .await
        .map_err(|error| JoinError::WrongCluster {
            peer: peer.into(),
            reason: crate::transport::describe_io(&error),
        })?;
    let protocol = |reason: String| JoinError::Protocol {
        peer: peer.into(),
        reason,
    };
    let mut line = serde_json::to_string(request).map_err(|e| protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut answer = String::new();
    tokio::time::timeout(JOIN_TIMEOUT, BufReader::new(stream).read_line(&mut answer))
        .await
        .map_err(|_| unreachable("no answer within 30 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let reply: JoinReply = serde_json::from_str(&answer).map_err(|e| protocol(e.to_string()))?;
    let grant = reply.outcome.map_err(|reason| JoinError::Refused {
        peer: peer.into(),
        reason,
    })?;
    if grant.cluster != token.cluster {
        return Err(JoinError::WrongCluster {
            peer: peer.into(),
            reason: format!(
                "it answered for cluster {}, the token is for {}",
                grant.cluster, token.cluster
            ),
        });
    }
    Ok(grant)
}
