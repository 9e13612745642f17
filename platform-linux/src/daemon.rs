//! `tandem daemon`: the event loop that feeds the core and carries out its actions.
//!
//! One task owns the `NodeCore` and the durable log. Network frames, control commands, join
//! requests, Raft-log completions and a 10 ms ticker arrive as events; after each event the loop
//! drains the core's actions in order: send frames, hand persists and compactions to the log's
//! writer thread (`log_writer`: the loop never waits for fsync), answer waiting callers. The
//! loop has no cluster logic of its own, and it never blocks: a stalled loop sends no
//! heartbeats and loses the lease, so `LoopWatch` logs every stall with its cause.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tandem_core::group::{ResourceSpec, ServiceSpec};
use tandem_core::{Action, NodeCore, NodeId, Plan, Reply, StateChange, Timing};
use tokio::sync::{mpsc, oneshot};

use crate::agent_host::{AgentHost, Completion};
use crate::config::{self, NodeConfig};
use crate::control::{self, ControlRequest};
use crate::join::{JoinGrant, JoinReply, JoinRequest, PeerEntry};
use crate::log_writer::{LogWriter, WriteDone};
use crate::loop_watch::LoopWatch;
use crate::pki::{self, CaMaterial};
use crate::raftlog::DurableLog;
use crate::statedir::{Identity, StateDir};
use crate::token::JoinToken;
use crate::transport::{self, Inbound, Links, LocalIdentity, PeerAddress};
use crate::volume_io::LeaseGate;
use crate::volumes::{HostContext, VolumeHost};
use crate::watchdog::{monotonic_ms, Pet, WatchdogLink};

/// A proposal that is not committed within this time is answered with a refusal.
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on action-drain rounds per event (each round is one batch from the core).
const MAX_DRAIN_ROUNDS: usize = 64;
/// How long links to a removed node stay up: long enough for its pings to be answered with
/// `Evicted` (the leader stops replicating to it, so Raft alone never tells it).
const DEPARTED_GRACE: Duration = Duration::from_secs(60);

/// Someone waiting for a proposal to commit.
enum Waiter {
    Control {
        reply: oneshot::Sender<Reply>,
        answer: Option<Reply>,
        deadline: Instant,
    },
    Join {
        reply: oneshot::Sender<JoinReply>,
        grant: JoinGrant,
        deadline: Instant,
    },
}

impl Waiter {
    fn deadline(&self) -> Instant {
        match self {
            Waiter::Control { deadline, .. } | Waiter::Join { deadline, .. } => *deadline,
        }
    }

    fn finish(self, outcome: Result<String, String>, peers: Vec<PeerEntry>) {
        match (self, outcome) {
            (Waiter::Control { reply, answer, .. }, Ok(message)) => {
                let _ = reply.send(answer.unwrap_or(Reply::Done { message }));
            }
            (Waiter::Control { reply, .. }, Err(message)) => {
                let _ = reply.send(Reply::Refused { message });
            }
            (
                Waiter::Join {
                    reply, mut grant, ..
                },
                Ok(_),
            ) => {
                grant.peers = peers;
                let _ = reply.send(JoinReply { outcome: Ok(grant) });
            }
            (Waiter::Join { reply, .. }, Err(reason)) => {
                let _ = reply.send(JoinReply::refused(reason));
            }
        }
    }
}

/// What woke the event loop.
enum LoopEvent {
    Tick,
    Inbound(Inbound),
    Control(ControlRequest),
    Proposal(StateChange),
    Resource(Box<Completion>),
    LogWritten(WriteDone),
    Stop,
}

/// The running node.
struct Daemon {
    core: NodeCore,
    log: LogWriter,
    links: Links,
    started: Instant,
    ca: CaMaterial,
    ca_fingerprint: [u8; 32],
    bootstrap_peers: Vec<PeerEntry>,
    next_request: u64,
    waiting: HashMap<u64, Waiter>,
    synced_at: Option<u64>,
    /// Nodes removed from the state, with when the link to them is finally dropped.
    departed: HashMap<NodeId, (PeerAddress, Instant)>,
    volumes: VolumeHost,
    /// The applied index the volume frontends were last reconciled at.
    volumes_at: Option<u64>,
    /// The agent (runs groups here) and the leader's placement loop.
    agents: AgentHost,
    /// When the agent last had a round (monotonic ms).
    agents_at: u64,
    /// The node lease as the write paths see it.
    lease: Arc<LeaseGate>,
    /// The watchdog process that fences this node if the loop freezes (`watchdog`).
    watchdog: Option<WatchdogLink>,
    /// When the watchdog was last (re)started.
    watchdog_started: Option<Instant>,
}

/// How long a clean stop waits for the groups here to stop and be released.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(90);

/// The least time between two starts of the watchdog.
const WATCHDOG_RESTART: Duration = Duration::from_secs(5);

/// What this node runs, for the watchdog: its lease (`at_ms` on the shared monotonic clock,
/// read no later than `now_ms`, so the end it announces is never late), whether the agent may
/// have resources of any group running here, and the virtual IPs and systemd units of those
/// groups.
fn watchdog_pet(core: &NodeCore, agents: &AgentHost, at_ms: u64, now_ms: u64) -> Pet {
    let mut pet = Pet {
        at_ms,
        lease_ms: core.node_lease_remaining(now_ms),
        escalate_ms: tandem_core::timing::watchdog_escalate_ms(core.timing()),
        ..Pet::default()
    };
    for (name, group) in &core.state().groups {
        if !agents.is_active(name) {
            continue;
        }
        pet.holding = true;
        for resource in &group.spec.resources {
            match resource {
                ResourceSpec::Ip { cidr, .. } => pet.addresses.push(cidr.clone()),
                ResourceSpec::Service {
                    service: ServiceSpec::Systemd { unit },
                    ..
                } => pet.units.push(unit.clone()),
                _ => {}
            }
        }
    }
    pet
}

/// How often the agent and the placement loop look at the state.
const AGENT_ROUND_MS: u64 = 50;

/// Maps the config file's optional timing overrides onto the defaults.
pub fn timing_from(config: &NodeConfig) -> Timing {
    let defaults = Timing::default();
    let t = &config.timing;
    Timing {
        tick_ms: t.tick_ms.unwrap_or(defaults.tick_ms),
        election_ticks: t
            .election_ticks
            .map_or(defaults.election_ticks, |v| v as usize),
        heartbeat_ticks: t
            .heartbeat_ticks
            .map_or(defaults.heartbeat_ticks, |v| v as usize),
        ping_interval_ms: t.ping_interval_ms.unwrap_or(defaults.ping_interval_ms),
        node_timeout_ms: t.node_timeout_ms.unwrap_or(defaults.node_timeout_ms),
        lease_timeout_ms: t.lease_timeout_ms.unwrap_or(defaults.lease_timeout_ms),
        compact_every: defaults.compact_every,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the daemon of `root` until SIGTERM/SIGINT or removal from the cluster.
pub async fn run(root: &Path) -> anyhow::Result<()> {
    let mut dir = StateDir::open(root)?;
    dir.lock_exclusive()?;
    let identity = dir.read_identity()?;
    let config = config::load(&dir.config_path())?;
    dir.check_matches_certificate(&identity)?;
    let node = dir.load_node_material()?;
    let ca = dir.load_ca()?;
    let started = Instant::now();
    let (core, log, log_done) = restore_core(&dir, &identity, &config)?;
    let listener = transport::listen(&config.listen).await?;
    let control_listener = control::bind(&dir.control_socket_path()).await?;
    let me = LocalIdentity {
        cluster: identity.cluster,
        node: identity.node_id,
    };
    let (inbound_tx, inbound) = mpsc::channel(4096);
    let (control_tx, control_rx) = mpsc::channel(64);
    tokio::spawn(transport::serve(
        listener,
        pki::server_config(&ca.cert_pem, &node)?,
        me,
        inbound_tx,
    ));
    tokio::spawn(control::serve(control_listener, control_tx));
    let client_tls = pki::client_config(&ca.cert_pem, &node)?;
    let (proposals_tx, proposals) = mpsc::channel(256);
    let lease = Arc::new(LeaseGate::new());
    let host = HostContext {
        me: identity.node_id,
        cluster: identity.cluster,
        state_dir: dir.root().to_path_buf(),
        tls: client_tls.clone(),
        proposals: proposals_tx,
        lease: lease.clone(),
    };
    let (agents, completions) = AgentHost::new(identity.node_id, dir.root().to_path_buf());
    let mut daemon = Daemon {
        core,
        log,
        links: Links::new(client_tls.clone()),
        started,
        ca_fingerprint: pki::ca_fingerprint(&ca.cert_pem)?,
        ca,
        bootstrap_peers: read_bootstrap_peers(&dir),
        // Entries applied again after a restart carry request numbers from the previous run;
        // starting at a random number keeps them from completing a new caller's request.
        next_request: rand::random::<u64>() >> 1,
        waiting: HashMap::new(),
        synced_at: None,
        departed: HashMap::new(),
        volumes: VolumeHost::new(host),
        volumes_at: None,
        agents,
        agents_at: 0,
        lease,
        watchdog: None,
        watchdog_started: None,
    };
    tracing::info!(
        "node {} (id {}) of cluster {} serving on {}",
        identity.node_name,
        identity.node_id,
        identity.cluster,
        config.listen
    );
    sd_notify_ready();
    let mut inputs = Inputs {
        inbound,
        control: control_rx,
        proposals,
        completions,
        log_done,
    };
    event_loop(&mut daemon, &mut inputs).await?;
    daemon.agents.shutdown(&daemon.core).await;
    daemon.volumes.shutdown().await;
    daemon.log.finish();
    if let Some(watchdog) = daemon.watchdog.take() {
        watchdog.bye();
    }
    let _ = std::fs::remove_file(dir.control_socket_path());
    tracing::info!("daemon stopped");
    Ok(())
}

/// The core as the durable log left it, and the log's writer thread.
fn restore_core(
    dir: &StateDir,
    identity: &Identity,
    config: &NodeConfig,
) -> anyhow::Result<(NodeCore, LogWriter, mpsc::Receiver<WriteDone>)> {
    let (log, recovered) = DurableLog::open(&dir.raft_dir(), identity.cluster)?;
    let durable = tandem_core::DurableState {
        hard_state: recovered.hard_state,
        snapshot: recovered.snapshot.unwrap_or_default(),
        entries: recovered.entries,
    };
    let mut core = NodeCore::restore(
        identity.cluster,
        identity.node_id,
        durable,
        timing_from(config),
        0,
    )
    .with_context(|| format!("cannot start node from {}", dir.raft_dir().display()))?;
    core.seed_elections(rand::random());
    let (log, log_done) = LogWriter::start(log).context("cannot start the Raft log writer")?;
    Ok((core, log, log_done))
}

/// The channels the event loop listens on (besides its ticker and signals).
struct Inputs {
    inbound: mpsc::Receiver<Inbound>,
    control: mpsc::Receiver<ControlRequest>,
    proposals: mpsc::Receiver<StateChange>,
    completions: mpsc::Receiver<Completion>,
    log_done: mpsc::Receiver<WriteDone>,
}

/// Runs until the node is removed, or a clean stop finished (or gave up after
/// `SHUTDOWN_LIMIT`). A clean stop keeps the loop running while the groups here stop, demote
/// and release, so their proposals can commit.
async fn event_loop(daemon: &mut Daemon, inputs: &mut Inputs) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stopping: Option<Instant> = None;
    let mut watch = LoopWatch::new();
    loop {
        let event = tokio::select! {
            _ = ticker.tick() => LoopEvent::Tick,
            Some(event) = inputs.inbound.recv() => LoopEvent::Inbound(event),
            Some(request) = inputs.control.recv() => LoopEvent::Control(request),
            Some(change) = inputs.proposals.recv() => LoopEvent::Proposal(change),
            Some(done) = inputs.completions.recv() => LoopEvent::Resource(Box::new(done)),
            Some(done) = inputs.log_done.recv() => LoopEvent::LogWritten(done),
            _ = terminate.recv() => LoopEvent::Stop,
            _ = tokio::signal::ctrl_c() => LoopEvent::Stop,
        };
        let started = Instant::now();
        if matches!(event, LoopEvent::Tick) {
            watch.ticked(started);
        }
        let label = daemon.handle(event, &mut stopping)?;
        daemon.drain()?;
        watch.handled(label, started.elapsed());
        if daemon.core.is_removed() {
            tracing::warn!("this node was removed from the cluster; the daemon stops");
            break;
        }
        if let Some(since) = stopping {
            let now = daemon.now();
            if daemon.agents.is_quiet(&daemon.core, now) || since.elapsed() > SHUTDOWN_LIMIT {
                break;
            }
        }
    }
    Ok(())
}

fn read_bootstrap_peers(dir: &StateDir) -> Vec<PeerEntry> {
    std::fs::read(dir.peers_path())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Tells systemd (Type=notify) we are up, when run under it.
fn sd_notify_ready() {
    if let Ok(path) = std::env::var("NOTIFY_SOCKET") {
        if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
            let _ = socket.send_to(b"READY=1", path);
        }
    }
}

impl Daemon {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A change the data path asks for (a leg's state); nobody waits for its answer, and the
    /// replication core proposes again if it does not commit.
    fn propose_internal(&mut self, change: StateChange) {
        let request = self.next_request;
        self.next_request += 1;
        if let Err(error) = self.core.propose(request, change.clone()) {
            tracing::warn!("cannot propose {change:?}: {error}");
        }
    }

    /// Proposals of the agent and the placement loop: retried by them, so a refusal here
    /// (no leader during a partition) is only worth a debug line.
    fn propose_quietly(&mut self, changes: Vec<StateChange>) {
        for change in changes {
            let request = self.next_request;
            self.next_request += 1;
            if let Err(error) = self.core.propose(request, change.clone()) {
                tracing::debug!("cannot propose {change:?} now: {error}");
            }
        }
    }

    /// Handles one event; returns what it was, for the loop watch.
    fn handle(
        &mut self,
        event: LoopEvent,
        stopping: &mut Option<Instant>,
    ) -> anyhow::Result<&'static str> {
        Ok(match event {
            LoopEvent::Tick => {
                self.on_tick();
                "a tick"
            }
            LoopEvent::Inbound(event) => {
                self.on_inbound(event);
                "a peer frame"
            }
            LoopEvent::Control(request) => {
                self.on_control(request);
                "a command"
            }
            LoopEvent::Proposal(change) => {
                self.propose_internal(change);
                "an agent proposal"
            }
            LoopEvent::Resource(done) => {
                self.on_resource_done(*done);
                "a resource completion"
            }
            LoopEvent::LogWritten(done) => {
                self.on_log_written(done)?;
                "a log write completion"
            }
            LoopEvent::Stop => {
                self.begin_stop(stopping);
                "a stop signal"
            }
        })
    }

    fn begin_stop(&mut self, stopping: &mut Option<Instant>) {
        if stopping.is_none() {
            tracing::info!("stopping: the groups here stop and are released first");
            *stopping = Some(Instant::now());
            self.agents.shut_down();
        }
    }

    /// Tells the watchdog what this node holds; restarts it (at most every few seconds) if it
    /// is gone, so a frozen loop is always fenced.
    fn pet_watchdog(&mut self, at_ms: u64, now_ms: u64) {
        let pet = watchdog_pet(&self.core, &self.agents, at_ms, now_ms);
        if let Some(watchdog) = self.watchdog.as_mut() {
            match watchdog.pet(&pet) {
                Ok(()) => return,
                Err(error) => tracing::warn!("the watchdog is gone ({error}); starting a new one"),
            }
            self.watchdog = None;
        }
        if self
            .watchdog_started
            .is_some_and(|at| at.elapsed() < WATCHDOG_RESTART)
        {
            return;
        }
        self.watchdog_started = Some(Instant::now());
        match WatchdogLink::start() {
            Ok(mut watchdog) => {
                let _ = watchdog.pet(&pet);
                self.watchdog = Some(watchdog);
            }
            Err(error) => tracing::error!(
                "cannot start the watchdog: {error}; a frozen daemon could not fence this node"
            ),
        }
    }

    /// A persist is durable: the core may now send what waited for it.
    fn on_log_written(&mut self, done: WriteDone) -> anyhow::Result<()> {
        match done {
            WriteDone::Persisted { number } => {
                self.core.persisted(number);
                Ok(())
            }
            WriteDone::Failed { what, error } => Err(anyhow::Error::new(error).context(format!(
                "cannot {what} the Raft log; stopping rather than risk the cluster's safety"
            ))),
        }
    }

    fn on_resource_done(&mut self, done: Completion) {
        let changes = self.agents.completed(&self.core, self.now(), done);
        self.propose_quietly(changes);
    }

    fn on_tick(&mut self) {
        self.core.tick(self.now());
        let at_ms = monotonic_ms();
        let now_ms = self.now();
        self.lease.publish(self.core.node_lease_remaining(now_ms));
        self.pet_watchdog(at_ms, now_ms);
        if now_ms.saturating_sub(self.agents_at) >= AGENT_ROUND_MS {
            self.agents_at = now_ms;
            let changes = self.agents.round(&self.core, now_ms);
            self.propose_quietly(changes);
        }
        let now = Instant::now();
        if self.departed.values().any(|(_, until)| *until <= now) {
            self.departed.retain(|_, (_, until)| *until > now);
            self.synced_at = None;
        }
        let expired: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, waiter)| waiter.deadline() <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(waiter) = self.waiting.remove(&id) {
                let reason = "not committed within 10 s: the cluster may lack quorum, or a membership change is in progress; try again";
                waiter.finish(Err(reason.into()), Vec::new());
            }
        }
    }

    fn on_inbound(&mut self, event: Inbound) {
        match event {
            Inbound::Frame { bytes, peer } => {
                if let Err(error) = self.core.receive(self.now(), &bytes) {
                    tracing::warn!("malformed frame from {peer}: {error}");
                }
            }
            Inbound::Join { request, reply } => self.on_join(request, reply),
            Inbound::Replication {
                from,
                volume,
                peer,
                stream,
            } => self
                .volumes
                .accept_replication(self.core.state(), from, volume, &peer, stream),
        }
    }

    fn on_control(&mut self, request: ControlRequest) {
        let ControlRequest { command, reply } = request;
        match self.core.plan_command(self.now(), unix_now(), &command) {
            Plan::Answer(mut answer) => {
                if let Reply::Volumes { volumes } = &mut answer {
                    self.volumes.annotate(volumes);
                }
                let _ = reply.send(answer);
            }
            Plan::Propose(change) => self.propose_for_control(change, reply, None),
            Plan::Verify { volume, repair } => match self.volumes.start_verify(volume, repair) {
                Ok(started) => {
                    tokio::spawn(async move {
                        let answer = match started.await {
                            Ok(Ok(message)) => Reply::Done { message },
                            Ok(Err(message)) => Reply::Refused { message },
                            Err(_) => Reply::Refused {
                                message: "the volume stopped being primary here".into(),
                            },
                        };
                        let _ = reply.send(answer);
                    });
                }
                Err(message) => {
                    let _ = reply.send(Reply::Refused { message });
                }
            },
            Plan::MakeToken { ttl_secs } => {
                let token = JoinToken::generate(self.core.cluster(), self.ca_fingerprint);
                let now_unix = unix_now();
                let expires_unix = now_unix + ttl_secs;
                let change = StateChange::AddJoinToken {
                    digest: token.secret_digest(),
                    expires_unix,
                    now_unix,
                };
                let answer = Reply::Token {
                    token: token.encode(),
                    expires_unix,
                };
                self.propose_for_control(change, reply, Some(answer));
            }
        }
    }

    fn propose_for_control(
        &mut self,
        change: StateChange,
        reply: oneshot::Sender<Reply>,
        answer: Option<Reply>,
    ) {
        let waiter = Waiter::Control {
            reply,
            answer,
            deadline: Instant::now() + PROPOSAL_TIMEOUT,
        };
        self.propose(change, waiter);
    }

    fn propose(&mut self, change: StateChange, waiter: Waiter) {
        let request = self.next_request;
        self.next_request += 1;
        match self.core.propose(request, change) {
            Ok(()) => {
                self.waiting.insert(request, waiter);
            }
            Err(error) => waiter.finish(Err(error.to_string()), Vec::new()),
        }
    }

    fn on_join(&mut self, request: JoinRequest, reply: oneshot::Sender<JoinReply>) {
        match self.admit(&request) {
            Ok((change, grant)) => {
                let waiter = Waiter::Join {
                    reply,
                    grant,
                    deadline: Instant::now() + PROPOSAL_TIMEOUT,
                };
                self.propose(change, waiter);
            }
            Err(reason) => {
                tracing::warn!("refused join of {:?}: {reason}", request.name);
                let _ = reply.send(JoinReply::refused(reason));
            }
        }
    }

    /// Checks a join request and prepares the change and the grant (certificate signed first,
    /// so a bad CSR never leaves a half-added node).
    fn admit(&mut self, request: &JoinRequest) -> Result<(StateChange, JoinGrant), String> {
        let token = JoinToken::parse(&request.token).map_err(|e| e.to_string())?;
        let cluster = self.core.cluster();
        if token.cluster != cluster {
            return Err(format!(
                "the token is for cluster {}, this is cluster {cluster}",
                token.cluster
            ));
        }
        pki::validate_node_name(&request.name).map_err(|e| e.to_string())?;
        request
            .addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("listen address {:?} is not HOST:PORT: {e}", request.addr))?;
        let change = self
            .core
            .prepare_join(
                &request.name,
                &request.addr,
                request.site.clone(),
                request.witness,
                &token.secret_digest(),
                unix_now(),
            )
            .map_err(|e| e.to_string())?;
        let StateChange::AddNode { node, .. } = &change else {
            return Err("internal: join produced no node".into());
        };
        let node_cert_pem = pki::sign_node_csr(&self.ca, cluster, &request.name, &request.csr_pem)
            .map_err(|e| e.to_string())?;
        let grant = JoinGrant {
            cluster,
            node_id: node.id,
            role: node.role,
            ca_cert_pem: self.ca.cert_pem.clone(),
            ca_key_pem: self.ca.key_pem.clone(),
            node_cert_pem,
            peers: Vec::new(),
        };
        Ok((change, grant))
    }

    /// Carries out what the core asked for, in order, until it asks for nothing more.
    fn drain(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_DRAIN_ROUNDS {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.perform(action)?;
            }
        }
        self.sync_links();
        let applied = self.core.applied_index();
        if self.volumes_at != Some(applied) {
            self.volumes_at = Some(applied);
            self.volumes.reconcile(self.core.state());
        }
        Ok(())
    }

    fn perform(&mut self, action: Action) -> anyhow::Result<()> {
        match action {
            Action::Send { to, bytes } => self.links.send(to, bytes),
            Action::Persist {
                number,
                hard_state,
                entries,
                snapshot,
            } => self.log.append(number, hard_state, entries, snapshot)?,
            Action::Compact { snapshot } => self.log.compact(snapshot)?,
            Action::Applied { .. } => {}
            Action::Completed { request, outcome } => {
                if let Some(waiter) = self.waiting.remove(&request) {
                    waiter.finish(outcome, self.peer_entries());
                }
            }
            Action::Removed => {}
            Action::Note { message } if message.starts_with("WARNING") => {
                tracing::warn!("{message}")
            }
            Action::Note { message } => tracing::info!("{message}"),
        }
        Ok(())
    }

    fn peer_entries(&self) -> Vec<PeerEntry> {
        self.core
            .state()
            .nodes
            .values()
            .map(|node| PeerEntry {
                id: node.id,
                name: node.name.clone(),
                addr: node.addr.clone(),
            })
            .collect()
    }

    /// Remembers linked nodes that left the state, so their pings can still be answered.
    fn note_departed(&mut self) {
        let state = self.core.state();
        let until = Instant::now() + DEPARTED_GRACE;
        for (id, address) in self.links.linked() {
            let removed = id < state.next_node_id && !state.nodes.contains_key(&id);
            if removed && !self.departed.contains_key(&id) {
                self.departed.insert(id, (address, until));
            }
        }
    }

    /// Dials every member the state (or, before the first snapshot, the join reply) names.
    fn sync_links(&mut self) {
        let applied = self.core.applied_index();
        if self.synced_at == Some(applied) {
            return;
        }
        self.synced_at = Some(applied);
        let me: NodeId = self.core.id();
        let mut peers: HashMap<NodeId, PeerAddress> = HashMap::new();
        for entry in &self.bootstrap_peers {
            peers.insert(
                entry.id,
                PeerAddress {
                    name: entry.name.clone(),
                    addr: entry.addr.clone(),
                },
            );
        }
        for node in self.core.state().nodes.values() {
            peers.insert(
                node.id,
                PeerAddress {
                    name: node.name.clone(),
                    addr: node.addr.clone(),
                },
            );
        }
        if !self.core.state().nodes.is_empty() {
            self.note_departed();
            peers.retain(|id, _| self.core.state().nodes.contains_key(id));
        }
        for (id, (address, _)) in &self.departed {
            peers.entry(*id).or_insert_with(|| address.clone());
        }
        peers.remove(&me);
        self.links.sync(&peers);
    }
}
