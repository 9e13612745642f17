//! Runs the core's agent and the leader's placement loop inside the daemon.
//!
//! The decisions are the core's ([`tandem_core::agent`], [`tandem_core::placement`]); this
//! module only does what they ask: it runs resource operations on tokio tasks through the
//! runners in [`crate::resources`] and reports each outcome back, hands proposals to the
//! daemon, logs timeline events and delivers them to the cluster (again, until they are
//! committed: a node that was cut off delivers its events once it is back).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;

use tandem_core::agent::{self, Agent, AgentAction, Inputs, OpKind};
use tandem_core::events::{Event, MAX_BATCH};
use tandem_core::group::ResourceSpec;
use tandem_core::placement::Placer;
use tandem_core::{scheduler, NodeCore, NodeId, StateChange};
use tokio::sync::mpsc;

use crate::resources::{Outcome, Runner, RunnerContext};

/// Events waiting for delivery beyond this are dropped, oldest first (they are logged).
const MAX_PENDING_EVENTS: usize = 1_000;
/// Undelivered events are proposed again after this long.
const EVENT_RETRY_MS: u64 = 2_000;
/// How long a clean shutdown waits for each resource to stop.
const SHUTDOWN_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A finished resource operation.
pub struct Completion {
    op: u64,
    group: String,
    index: usize,
    outcome: agent::Outcome,
    runner: Option<Runner>,
}

/// The agent, the placer and the runners of one daemon.
pub struct AgentHost {
    me: NodeId,
    state_dir: PathBuf,
    agent: Agent,
    placer: Placer,
    /// Idle runners, kept between operations (an `exec` runner owns its child).
    runners: HashMap<(String, usize), Runner>,
    /// Operations in flight, to abort one the agent abandons.
    tasks: HashMap<u64, tokio::task::AbortHandle>,
    done: mpsc::Sender<Completion>,
    pending_events: VecDeque<Event>,
    /// When events were last proposed, and whether new ones arrived since.
    events_flushed_at: u64,
    new_events: bool,
}

impl AgentHost {
    pub fn new(me: NodeId, state_dir: PathBuf) -> (AgentHost, mpsc::Receiver<Completion>) {
        let (done, completions) = mpsc::channel(256);
        let host = AgentHost {
            me,
            state_dir,
            agent: Agent::new(me),
            placer: Placer::new(),
            runners: HashMap::new(),
            tasks: HashMap::new(),
            done,
            pending_events: VecDeque::new(),
            events_flushed_at: 0,
            new_events: false,
        };
        (host, completions)
    }

    /// One round on `now` (the daemon's monotonic ms): the changes to propose.
    pub fn round(&mut self, core: &NodeCore, now: u64) -> Vec<StateChange> {
        let now_unix_ms = unix_now_ms();
        let mut proposals = Vec::new();
        let failover = scheduler::default_failover_timeout_ms(core.timing());
        match core.liveness(now, failover) {
            Some(liveness) => {
                let state = core.state();
                proposals.extend(
                    self.placer
                        .tick(now, now_unix_ms, self.me, state, &liveness),
                );
            }
            None => self.placer.reset(),
        }
        let inputs = Inputs {
            now,
            now_unix_ms,
            state: core.state(),
            holds_lease: core.holds_node_lease(now),
        };
        self.agent.tick(inputs);
        self.perform(core, &mut proposals);
        self.flush_events(core, now, &mut proposals);
        proposals
    }

    /// A resource operation finished: tell the agent; the changes to propose.
    pub fn completed(&mut self, core: &NodeCore, now: u64, done: Completion) -> Vec<StateChange> {
        self.tasks.remove(&done.op);
        if let Some(runner) = done.runner {
            self.runners
                .insert((done.group.clone(), done.index), runner);
        }
        let inputs = Inputs {
            now,
            now_unix_ms: unix_now_ms(),
            state: core.state(),
            holds_lease: core.holds_node_lease(now),
        };
        self.agent.completed(inputs, done.op, done.outcome);
        let mut proposals = Vec::new();
        self.perform(core, &mut proposals);
        proposals
    }

    fn perform(&mut self, core: &NodeCore, proposals: &mut Vec<StateChange>) {
        for action in self.agent.take_actions() {
            match action {
                AgentAction::Run {
                    op,
                    group,
                    index,
                    kind,
                    spec,
                } => self.run(core, op, group, index, kind, spec),
                AgentAction::Propose(change) => proposals.push(change),
                AgentAction::Event(event) => self.record_event(event),
                AgentAction::Cancel { op } => {
                    // The runner goes with the task; the next operation makes a new one
                    // (an exec service is found again through its pid file).
                    if let Some(task) = self.tasks.remove(&op) {
                        task.abort();
                    }
                }
            }
        }
    }

    /// Starts one operation on its own task; its completion comes back on the channel.
    fn run(
        &mut self,
        core: &NodeCore,
        op: u64,
        group: String,
        index: usize,
        kind: OpKind,
        spec: ResourceSpec,
    ) {
        let runner = self.runners.remove(&(group.clone(), index));
        let context = RunnerContext {
            group: group.clone(),
            index,
            state_dir: self.state_dir.clone(),
            image: image_of(&self.state_dir, &spec, core),
        };
        let done = self.done.clone();
        let task = tokio::spawn(async move {
            let (outcome, runner) = operate(runner, spec, context, kind).await;
            let completion = Completion {
                op,
                group,
                index,
                outcome,
                runner,
            };
            // The daemon is stopping when nobody listens; nothing is left to report to.
            let _ = done.send(completion).await;
        });
        self.tasks.insert(op, task.abort_handle());
    }

    fn record_event(&mut self, event: Event) {
        tracing::info!("timeline: {event}");
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            if let Some(dropped) = self.pending_events.pop_front() {
                tracing::warn!("timeline backlog full; dropped the oldest event: {dropped}");
            }
        }
        self.pending_events.push_back(event);
        self.new_events = true;
    }

    /// Proposes events not yet in the committed timeline: at once when new ones arrived,
    /// again after [`EVENT_RETRY_MS`] otherwise.
    fn flush_events(&mut self, core: &NodeCore, now: u64, proposals: &mut Vec<StateChange>) {
        let timeline = &core.state().timeline.events;
        self.pending_events.retain(|event| {
            !timeline
                .iter()
                .rev()
                .any(|recorded| &recorded.event == event)
        });
        let due = self.new_events || now.saturating_sub(self.events_flushed_at) >= EVENT_RETRY_MS;
        if self.pending_events.is_empty() || !due || core.leader().is_none() {
            return;
        }
        let events: Vec<Event> = self
            .pending_events
            .iter()
            .take(MAX_BATCH)
            .cloned()
            .collect();
        proposals.push(StateChange::Events { events });
        self.events_flushed_at = now;
        self.new_events = false;
    }

    /// The daemon is stopping: the agent stops and releases every group here.
    pub fn shut_down(&mut self) {
        self.agent.shut_down();
    }

    /// Whether any resource of `group` may be running here.
    pub fn is_active(&self, group: &str) -> bool {
        self.agent.is_active(group)
    }

    /// Nothing runs here any more and nothing is held (or can be released).
    pub fn is_quiet(&self, core: &NodeCore, now: u64) -> bool {
        self.agent
            .is_quiet(core.state(), core.holds_node_lease(now))
    }

    /// A clean stop of the daemon: stop every resource that may run here, in reverse order,
    /// so no virtual IP or mount is left behind. The cluster moves the groups elsewhere once
    /// this node is gone past the failover timeout.
    pub async fn shutdown(&mut self, core: &NodeCore) {
        for (name, group) in &core.state().groups {
            if !self.agent.is_active(name) {
                continue;
            }
            tracing::info!("stopping group {name} before the daemon exits");
            for (index, spec) in group.spec.resources.iter().enumerate().rev() {
                if matches!(spec, ResourceSpec::Volume { .. }) {
                    continue;
                }
                let runner = self.runners.remove(&(name.clone(), index));
                let context = RunnerContext {
                    group: name.clone(),
                    index,
                    state_dir: self.state_dir.clone(),
                    image: image_of(&self.state_dir, spec, core),
                };
                let stop = operate(runner, spec.clone(), context, OpKind::Stop);
                match tokio::time::timeout(SHUTDOWN_STOP_LIMIT, stop).await {
                    Ok((agent::Outcome::Failed(why), _)) => {
                        tracing::warn!("group {name}, resource {index}: stop failed: {why}")
                    }
                    Ok(_) => {}
                    Err(_) => tracing::warn!("group {name}, resource {index}: stop timed out"),
                }
            }
        }
    }
}

/// Runs one operation with a runner (made on first use: an OCF agent's meta-data is read
/// then, off the async threads).
async fn operate(
    runner: Option<Runner>,
    spec: ResourceSpec,
    context: RunnerContext,
    kind: OpKind,
) -> (agent::Outcome, Option<Runner>) {
    let mut runner = match runner {
        Some(runner) => runner,
        None => {
            let made = tokio::task::spawn_blocking(move || Runner::new(&spec, context)).await;
            match made {
                Ok(Ok(runner)) => runner,
                Ok(Err(error)) => return (agent::Outcome::Failed(error.to_string()), None),
                Err(error) => return (agent::Outcome::Failed(error.to_string()), None),
            }
        }
    };
    let outcome = match kind {
        OpKind::Start => runner.start().await,
        OpKind::Stop => runner.stop().await,
        OpKind::Monitor => runner.monitor().await,
    };
    let outcome = match outcome {
        Outcome::Running => agent::Outcome::Running,
        Outcome::NotRunning => agent::Outcome::NotRunning,
        Outcome::Failed(why) => agent::Outcome::Failed(why),
    };
    (outcome, Some(runner))
}

/// The FUSE image of a filesystem resource's volume: `<state-dir>/images/<vol>/<vol>.img`.
fn image_of(state_dir: &std::path::Path, spec: &ResourceSpec, core: &NodeCore) -> Option<PathBuf> {
    let ResourceSpec::Filesystem { volume, .. } = spec else {
        return None;
    };
    core.state().volume_by_name(volume)?;
    crate::fuse_export::image_path(state_dir, volume)
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
