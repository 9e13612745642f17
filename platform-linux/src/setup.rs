//! `tandem init` and `tandem join`: creating a node's state directory.
//!
//! Both write the same layout (identity, config, CA, node certificate, Raft log); `init` founds
//! a cluster, `join` asks a member for admission first and writes nothing until it is granted,
//! so a failed join leaves no half-made directory behind. The identity file is written last:
//! a directory without one is never mistaken for a usable node.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use rand::RngCore;
use tandem_core::{bootstrap, Admin, ClusterId, NodeInfo, Role};

use crate::config::{self, NodeConfig};
use crate::join::{self, JoinGrant, JoinRequest};
use crate::pki::{self, CaMaterial, NodeMaterial};
use crate::raftlog::DurableLog;
use crate::statedir::{Identity, StateDir};
use crate::token::JoinToken;

/// What the operator asked for, shared by init and join.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub listen: &'a str,
    pub site: Option<&'a str>,
}

/// The outcome of init or join, for the CLI to print.
pub struct Created {
    pub cluster: ClusterId,
    pub node_id: u64,
    pub role: Role,
}

fn check_spec(spec: &NodeSpec) -> anyhow::Result<()> {
    pki::validate_node_name(spec.name)?;
    let addr: SocketAddr = spec.listen.parse().with_context(|| {
        format!(
            "--listen {:?} is not HOST:PORT (an IP address and a port)",
            spec.listen
        )
    })?;
    if std::net::TcpListener::bind(addr).is_err() {
        bail!(
            "--listen {}: the address is in use or not on this machine",
            spec.listen
        );
    }
    Ok(())
}

/// Founds a new cluster with this node as its first voter.
pub fn init(root: &Path, spec: &NodeSpec) -> anyhow::Result<Created> {
    check_spec(spec)?;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let cluster = ClusterId(bytes);
    let ca = pki::new_cluster_ca(cluster)?;
    let node = pki::issue_node_cert(&ca, cluster, spec.name)?;
    let info = NodeInfo {
        id: 1,
        name: spec.name.to_string(),
        addr: spec.listen.to_string(),
        site: spec.site.map(str::to_string),
        role: Role::Voter,
        admin: Admin::Online,
    };
    let durable = bootstrap(cluster, info);
    let dir = StateDir::create(root)?;
    write_material(&dir, &ca, &node, spec)?;
    let mut log = DurableLog::create(&dir.raft_dir(), cluster)?;
    log.append(Some(&durable.hard_state), &[], Some(&durable.snapshot))?;
    write_identity(&dir, cluster, 1, spec.name)?;
    Ok(Created {
        cluster,
        node_id: 1,
        role: Role::Voter,
    })
}

/// Asks the member at `peer` to admit this node, then writes its state directory.
pub async fn join(
    root: &Path,
    spec: &NodeSpec<'_>,
    peer: &str,
    token: &str,
    witness: bool,
) -> anyhow::Result<Created> {
    let token = JoinToken::parse(token)?;
    check_spec(spec)?;
    if root.join("identity.json").exists() {
        bail!(
            "{} already holds a tandem node; choose another --state-dir",
            root.display()
        );
    }
    let (key_pem, csr_pem) = pki::new_node_key_and_csr(spec.name)?;
    let request = JoinRequest {
        token: token.encode(),
        name: spec.name.to_string(),
        addr: spec.listen.to_string(),
        site: spec.site.map(str::to_string),
        witness,
        csr_pem,
    };
    let grant = join::request_join(peer, &token, &request).await?;
    write_joined(root, spec, &grant, key_pem)
}

fn write_joined(
    root: &Path,
    spec: &NodeSpec,
    grant: &JoinGrant,
    key_pem: String,
) -> anyhow::Result<Created> {
    let dir = StateDir::create(root)?;
    let ca = CaMaterial {
        cert_pem: grant.ca_cert_pem.clone(),
        key_pem: grant.ca_key_pem.clone(),
    };
    let node = NodeMaterial {
        cert_pem: grant.node_cert_pem.clone(),
        key_pem,
    };
    write_material(&dir, &ca, &node, spec)?;
    let peers = serde_json::to_vec_pretty(&grant.peers)?;
    dir.write_secret(&dir.peers_path(), &String::from_utf8_lossy(&peers))?;
    DurableLog::create(&dir.raft_dir(), grant.cluster)?;
    write_identity(&dir, grant.cluster, grant.node_id, spec.name)?;
    Ok(Created {
        cluster: grant.cluster,
        node_id: grant.node_id,
        role: grant.role,
    })
}

fn write_material(
    dir: &StateDir,
    ca: &CaMaterial,
    node: &NodeMaterial,
    spec: &NodeSpec,
) -> anyhow::Result<()> {
    dir.write_secret(&dir.ca_cert_path(), &ca.cert_pem)?;
    dir.write_secret(&dir.ca_key_path(), &ca.key_pem)?;
    dir.write_secret(&dir.node_cert_path(), &node.cert_pem)?;
    dir.write_secret(&dir.node_key_path(), &node.key_pem)?;
    let config = NodeConfig {
        name: spec.name.to_string(),
        listen: spec.listen.to_string(),
        site: spec.site.map(str::to_string),
        timing: Default::default(),
        log: Default::default(),
    };
    config::save(&dir.config_path(), &config)?;
    Ok(())
}

fn write_identity(
    dir: &StateDir,
    cluster: ClusterId,
    node_id: u64,
    name: &str,
) -> anyhow::Result<()> {
    let identity = Identity {
        format: 1,
        cluster,
        node_id,
        node_name: name.to_string(),
    };
    dir.write_identity(&identity)?;
    Ok(())
}
