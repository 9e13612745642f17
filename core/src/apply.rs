//! `cluster.toml`: the declarative description of a cluster's volumes and groups, its parser,
//! and the plan that makes the committed state match it (`tandem apply FILE`).
//!
//! The file is parsed where the operator runs the CLI, with errors that name the file, line,
//! column and key (DESIGN.md §5 rule 5: a typo must never become a silent default). The plan is
//! a pure function of the committed state and the file, computed by the daemon: an ordered
//! list of ordinary [`Command`]s, each with a one-line description, so `--dry-run` shows
//! exactly what `apply` then sends, one command at a time, through the same checks as the
//! `volume` and `group` commands. Before it is returned, the whole plan is tried on a copy of
//! the state, so a plan that would be refused half-way is refused up front.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::command::{parse_size, Command, LegRequest};
use crate::group::{
    Failback, GroupSpec, ResourceSpec, DEFAULT_MAX_RESTARTS, DEFAULT_QUARANTINE_SECS,
    DEFAULT_RESTART_WINDOW_SECS,
};
use crate::ids::NodeId;
use crate::node::Plan;
use crate::state::{ClusterState, Role, StateChange};
use crate::volume::Granularity;

/// What `cluster.toml` declares: `[[volume]]` and `[[group]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    #[serde(default, rename = "volume")]
    pub volumes: Vec<VolumeDef>,
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupDef>,
}

/// A `[[volume]]`: `name`, `size` (`"1G"` or bytes) and `legs` (`"a:/path"`, `"a,b:/dev/x"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDef {
    pub name: String,
    #[serde(deserialize_with = "size_from")]
    pub size: u64,
    #[serde(serialize_with = "legs_to", deserialize_with = "legs_from")]
    pub legs: Vec<LegRequest>,
    /// Bytes per out-of-sync bit (`"4K"` to `"1M"`, a power of two; default 4 KiB).
    #[serde(default = "default_grain", deserialize_with = "size_u32_from")]
    pub bitmap_grain: u32,
    /// Bytes per activity-log extent (a power of two, at least the grain; default 4 MiB).
    #[serde(default = "default_extent", deserialize_with = "size_u32_from")]
    pub al_extent: u32,
}

fn default_grain() -> u32 {
    Granularity::default().bitmap_grain
}

fn default_extent() -> u32 {
    Granularity::default().al_extent
}

impl VolumeDef {
    fn granularity(&self) -> Granularity {
        Granularity {
            bitmap_grain: self.bitmap_grain,
            al_extent: self.al_extent,
        }
    }
}

/// A group as an operator writes it: [`GroupSpec`] with node names instead of ids. The same
/// schema serves `[[group]]` in cluster.toml, `tandem group create --file` and the commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    pub name: String,
    /// In start order (`[[group.resource]]` tables).
    #[serde(default, rename = "resource")]
    pub resources: Vec<ResourceSpec>,
    #[serde(default)]
    pub preferred: Vec<String>,
    #[serde(default)]
    pub failback: Failback,
    #[serde(default)]
    pub stickiness: u32,
    #[serde(default = "crate::group::default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "crate::group::default_restart_window")]
    pub restart_window_secs: u64,
    #[serde(default = "crate::group::default_quarantine")]
    pub quarantine_secs: u64,
    #[serde(default = "crate::group::default_enabled")]
    pub enabled: bool,
}

impl GroupDef {
    /// A group with every setting at its default.
    pub fn new(name: &str, resources: Vec<ResourceSpec>) -> GroupDef {
        GroupDef {
            name: name.to_string(),
            resources,
            preferred: Vec::new(),
            failback: Failback::Manual,
            stickiness: 0,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_window_secs: DEFAULT_RESTART_WINDOW_SECS,
            quarantine_secs: DEFAULT_QUARANTINE_SECS,
            enabled: true,
        }
    }

    fn spec_with(&self, preferred: Vec<NodeId>) -> GroupSpec {
        GroupSpec {
            name: self.name.clone(),
            resources: self.resources.clone(),
            preferred,
            failback: self.failback,
            stickiness: self.stickiness,
            max_restarts: self.max_restarts,
            restart_window_secs: self.restart_window_secs,
            quarantine_secs: self.quarantine_secs,
            enabled: self.enabled,
        }
    }

    /// Everything that can be checked without the cluster.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        if let Some(twice) = self.preferred.iter().find(|name| !seen.insert(*name)) {
            return Err(format!(
                "group {}: node {twice} is listed twice in preferred",
                self.name
            ));
        }
        self.spec_with(Vec::new())
            .validate()
            .map_err(|error| error.to_string())
    }

    /// The spec, with preferred node names resolved; refuses unknown nodes and witnesses.
    pub fn to_spec(&self, state: &ClusterState) -> Result<GroupSpec, String> {
        self.validate()?;
        let mut preferred = Vec::with_capacity(self.preferred.len());
        for name in &self.preferred {
            let group = &self.name;
            let node = state.node_by_name(name).ok_or_else(|| {
                format!("group {group}: preferred node {name:?} is not a member of this cluster")
            })?;
            if node.role == Role::Witness {
                return Err(format!(
                    "group {group}: preferred node {name} is a witness: witnesses never run \
                     resources"
                ));
            }
            preferred.push(node.id);
        }
        Ok(self.spec_with(preferred))
    }

    /// The definition of a committed spec (node ids named).
    pub fn from_spec(state: &ClusterState, spec: &GroupSpec) -> GroupDef {
        GroupDef {
            name: spec.name.clone(),
            resources: spec.resources.clone(),
            preferred: spec
                .preferred
                .iter()
                .map(|&id| node_name(state, id))
                .collect(),
            failback: spec.failback,
            stickiness: spec.stickiness,
            max_restarts: spec.max_restarts,
            restart_window_secs: spec.restart_window_secs,
            quarantine_secs: spec.quarantine_secs,
            enabled: spec.enabled,
        }
    }
}

/// A node's name, or `#id` for one that is not a member.
pub fn node_name(state: &ClusterState, id: NodeId) -> String {
    state
        .nodes
        .get(&id)
        .map_or_else(|| format!("#{id}"), |node| node.name.clone())
}

/// Accepts a byte count or a size with a unit (`"512M"`, `"1G"`).
fn size_from<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct SizeVisitor;
    impl Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a size such as \"512M\" or \"1G\", or a number of bytes")
        }
        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }
        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes).map_err(|_| E::custom(format!("size {bytes} is negative")))
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse_size(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(SizeVisitor)
}

fn size_u32_from<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let bytes = size_from(deserializer)?;
    u32::try_from(bytes).map_err(|_| de::Error::custom(format!("{bytes} bytes is too large")))
}

fn legs_from<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<LegRequest>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| text.parse().map_err(de::Error::custom))
        .collect()
}

fn legs_to<S: Serializer>(legs: &[LegRequest], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(legs.iter().map(LegRequest::to_string))
}

/// A file that cannot be used, and where: `FILE:LINE:COL: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ParseError {
    fn at(file: &str, text: &str, offset: usize, message: String) -> ParseError {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |at| at + 1);
        ParseError {
            file: file.to_string(),
            line: before.matches('\n').count() + 1,
            column: before.get(line_start..).unwrap_or("").chars().count() + 1,
            message,
        }
    }

    fn from_toml(file: &str, text: &str, error: &toml::de::Error) -> ParseError {
        let message = error.message().trim().to_string();
        let span = error.span().unwrap_or(0..0);
        let offset = unknown_key(&message)
            .and_then(|key| find_key(text, span.clone(), key))
            .unwrap_or(span.start);
        ParseError::at(file, text, offset, message)
    }
}

/// The key of a serde "unknown field `key`" message.
fn unknown_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Where `key = ...` is written inside `span` (serde reports an unknown key inside a tagged
/// resource table with the span of the whole table; this points at the key itself).
fn find_key(text: &str, span: std::ops::Range<usize>, key: &str) -> Option<usize> {
    let area = text.get(span.clone())?;
    let mut from = 0;
    while let Some(found) = area.get(from..)?.find(key) {
        let at = from + found;
        let before = area[..at].chars().next_back();
        let after = area[at + key.len()..].trim_start_matches([' ', '\t']);
        let starts = before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
        if starts && after.starts_with('=') {
            return Some(span.start + at);
        }
        from = at + key.len();
    }
    None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    volume: Vec<toml::Spanned<VolumeDef>>,
    #[serde(default)]
    group: Vec<toml::Spanned<GroupDef>>,
}

/// Parses `cluster.toml` (`file` names it in errors) and checks what needs no cluster: names
/// declared twice, and each group's own rules.
pub fn parse_cluster(file: &str, text: &str) -> Result<ClusterFile, ParseError> {
    let raw: RawFile =
        toml::from_str(text).map_err(|error| ParseError::from_toml(file, text, &error))?;
    let at = |offset: usize, message: String| ParseError::at(file, text, offset, message);
    let mut names = BTreeSet::new();
    for volume in &raw.volume {
        if !names.insert(volume.get_ref().name.as_str()) {
            let name = &volume.get_ref().name;
            return Err(at(
                volume.span().start,
                format!("volume {name} is declared twice"),
            ));
        }
    }
    let mut names = BTreeSet::new();
    for group in &raw.group {
        let def = group.get_ref();
        if !names.insert(def.name.as_str()) {
            let message = format!("group {} is declared twice", def.name);
            return Err(at(group.span().start, message));
        }
        def.validate()
            .map_err(|message| at(group.span().start, message))?;
    }
    Ok(ClusterFile {
        volumes: raw
            .volume
            .into_iter()
            .map(toml::Spanned::into_inner)
            .collect(),
        groups: raw
            .group
            .into_iter()
            .map(toml::Spanned::into_inner)
            .collect(),
    })
}

/// Parses one group written like a `[[group]]` of cluster.toml, at the top level of its file
/// (`name = ...`, `[[resource]]` tables): `tandem group create --file`.
pub fn parse_group(file: &str, text: &str) -> Result<GroupDef, ParseError> {
    let def: GroupDef =
        toml::from_str(text).map_err(|error| ParseError::from_toml(file, text, &error))?;
    def.validate()
        .map_err(|message| ParseError::at(file, text, 0, message))?;
    Ok(def)
}

/// One step of an apply plan: an ordinary command and what it does, in one line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub command: Command,
    pub description: String,
}

/// The steps, in order, and what the plan leaves alone (and why).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyPlan {
    pub steps: Vec<PlannedStep>,
    pub notes: Vec<String>,
}

/// A step being planned; `optional` ones (prune deletions) turn into notes when the state
/// refuses them instead of failing the plan.
struct Draft {
    step: PlannedStep,
    optional: bool,
}

fn draft(command: Command, description: String) -> Draft {
    Draft {
        step: PlannedStep {
            command,
            description,
        },
        optional: false,
    }
}

/// The ordered steps that make `state` match `desired`: volumes to create, groups to create
/// and update, then (only with `prune`) groups and volumes to delete. Refused when the file
/// asks for something unsupported (a volume's size or legs changed) or when a step would be
/// refused by the cluster.
pub fn plan(state: &ClusterState, desired: &ClusterFile, prune: bool) -> Result<ApplyPlan, String> {
    let mut drafts = Vec::new();
    let mut notes = Vec::new();
    for volume in &desired.volumes {
        match state.volume_by_name(&volume.name) {
            None => drafts.push(create_volume(volume)),
            Some(_) => check_volume_unchanged(state, volume)?,
        }
    }
    for def in &desired.groups {
        let spec = def.to_spec(state)?;
        match state.groups.get(&def.name) {
            None => drafts.push(create_group(def)),
            Some(group) if group.spec != spec => {
                let description = describe_update(state, &group.spec, &spec);
                drafts.push(draft(
                    Command::GroupUpdate { group: def.clone() },
                    description,
                ));
            }
            Some(_) => {}
        }
    }
    extra_steps(state, desired, prune, &mut drafts, &mut notes);
    let steps = try_steps(state, drafts, &mut notes)?;
    Ok(ApplyPlan { steps, notes })
}

/// Groups and volumes the file does not declare: deleted with `prune`, else only noted.
fn extra_steps(
    state: &ClusterState,
    desired: &ClusterFile,
    prune: bool,
    drafts: &mut Vec<Draft>,
    notes: &mut Vec<String>,
) {
    let declared = |name: &str| desired.groups.iter().any(|def| def.name == name);
    for group in state.groups.values().filter(|g| !declared(&g.spec.name)) {
        let name = group.spec.name.clone();
        if !prune {
            notes.push(format!(
                "group {name} is not in the file: kept (--prune deletes it)"
            ));
            continue;
        }
        match group.status.node {
            Some(node) => {
                if group.spec.enabled {
                    let description = format!("disable group {name} (not in the file; --prune)");
                    drafts.push(draft(
                        Command::GroupDisable { name: name.clone() },
                        description,
                    ));
                }
                notes.push(format!(
                    "group {name} is placed on {}: it is deleted by a later `apply --prune` \
                     once it has stopped",
                    node_name(state, node)
                ));
            }
            None => {
                let description = format!("delete group {name} (not in the file; --prune)");
                drafts.push(draft(Command::GroupDelete { name }, description));
            }
        }
    }
    let declared = |name: &str| desired.volumes.iter().any(|def| def.name == name);
    for volume in state.volumes.values().filter(|v| !declared(&v.name)) {
        let name = volume.name.clone();
        if !prune {
            notes.push(format!(
                "volume {name} is not in the file: kept (--prune deletes it)"
            ));
            continue;
        }
        let description = format!(
            "delete volume {name} (not in the file; --prune; leg contents are left in place)"
        );
        drafts.push(Draft {
            optional: true,
            ..draft(Command::VolumeDelete { name }, description)
        });
    }
}

/// Tries every step, in order, on a copy of the state.
fn try_steps(
    state: &ClusterState,
    drafts: Vec<Draft>,
    notes: &mut Vec<String>,
) -> Result<Vec<PlannedStep>, String> {
    let mut trial = state.clone();
    let mut steps = Vec::with_capacity(drafts.len());
    for Draft { step, optional } in drafts {
        let outcome = change_for(&trial, &step.command)
            .and_then(|change| trial.apply(&change).map_err(|error| error.to_string()));
        match outcome {
            Ok(_) => steps.push(step),
            Err(why) if optional => notes.push(format!("not planned: {}: {why}", step.description)),
            Err(why) => return Err(format!("{}: refused: {why}", step.description)),
        }
    }
    Ok(steps)
}

/// The state change a planned command proposes, as the daemon will decide it.
fn change_for(state: &ClusterState, command: &Command) -> Result<StateChange, String> {
    let planned = crate::volume_plan::plan(state, 0, command, |_| false)
        .or_else(|| crate::group_plan::change_for(state, command).map(into_plan));
    match planned {
        Some(Plan::Propose(change)) => Ok(change),
        Some(Plan::Answer(crate::Reply::Refused { message })) => Err(message),
        _ => Err(format!("{command:?} is not a change apply can plan")),
    }
}

fn into_plan(result: Result<StateChange, String>) -> Plan {
    match result {
        Ok(change) => Plan::Propose(change),
        Err(message) => Plan::Answer(crate::Reply::Refused { message }),
    }
}

fn create_volume(volume: &VolumeDef) -> Draft {
    let legs: Vec<String> = volume.legs.iter().map(LegRequest::to_string).collect();
    let description = format!(
        "create volume {} ({}, legs {})",
        volume.name,
        human_size(volume.size),
        legs.join(", ")
    );
    let command = Command::VolumeCreate {
        name: volume.name.clone(),
        size: volume.size,
        legs: volume.legs.clone(),
        granularity: volume.granularity(),
    };
    draft(command, description)
}

fn create_group(def: &GroupDef) -> Draft {
    let resources: Vec<String> = def.resources.iter().map(ToString::to_string).collect();
    let mut description = format!("create group {} ({})", def.name, resources.join(", "));
    if !def.preferred.is_empty() {
        description.push_str(&format!(", preferred {}", def.preferred.join(",")));
    }
    if !def.enabled {
        description.push_str(", disabled");
    }
    draft(Command::GroupCreate { group: def.clone() }, description)
}

/// Refuses a changed size or changed legs: not supported yet.
fn check_volume_unchanged(state: &ClusterState, volume: &VolumeDef) -> Result<(), String> {
    let Some(info) = state.volume_by_name(&volume.name) else {
        return Ok(());
    };
    let unsupported = "is not supported yet: keep the file's [[volume]] as the volume is \
                       (`tandem volume show` prints it)";
    if info.size != volume.size {
        return Err(format!(
            "volume {}: changing its size ({} -> {}) {unsupported}",
            volume.name,
            human_size(info.size),
            human_size(volume.size)
        ));
    }
    let leg_key = |nodes: Vec<String>, path: &str| {
        let nodes: BTreeSet<String> = nodes.into_iter().collect();
        (nodes, path.to_string())
    };
    let mut have: Vec<_> = info
        .legs
        .iter()
        .map(|leg| {
            leg_key(
                leg.nodes.iter().map(|&id| node_name(state, id)).collect(),
                &leg.path,
            )
        })
        .collect();
    let mut want: Vec<_> = volume
        .legs
        .iter()
        .map(|leg| leg_key(leg.nodes.clone(), &leg.path))
        .collect();
    have.sort();
    want.sort();
    if have != want {
        let text = |legs: &[(BTreeSet<String>, String)]| {
            let legs: Vec<String> = legs
                .iter()
                .map(|(nodes, path)| {
                    format!("{}:{path}", Vec::from_iter(nodes.iter().cloned()).join(","))
                })
                .collect();
            legs.join(", ")
        };
        return Err(format!(
            "volume {}: changing its legs ({} -> {}) {unsupported}",
            volume.name,
            text(&have),
            text(&want)
        ));
    }
    let (old, new) = (info.granularity, volume.granularity());
    if old != new {
        return Err(format!(
            "volume {}: changing its bitmap grain or activity-log extent ({} / {} -> {} / {}) \
             {unsupported}",
            volume.name,
            human_size(old.bitmap_grain.into()),
            human_size(old.al_extent.into()),
            human_size(new.bitmap_grain.into()),
            human_size(new.al_extent.into())
        ));
    }
    Ok(())
}

/// `update group web: preferred a,b -> b,a; failback manual -> auto`.
fn describe_update(state: &ClusterState, old: &GroupSpec, new: &GroupSpec) -> String {
    let names = |ids: &[NodeId]| {
        let names: Vec<String> = ids.iter().map(|&id| node_name(state, id)).collect();
        if names.is_empty() {
            "(none)".to_string()
        } else {
            names.join(",")
        }
    };
    let mut changes = Vec::new();
    let mut field = |what: &str, before: String, after: String| {
        if before != after {
            changes.push(format!("{what} {before} -> {after}"));
        }
    };
    field("enabled", old.enabled.to_string(), new.enabled.to_string());
    field("preferred", names(&old.preferred), names(&new.preferred));
    field(
        "failback",
        format!("{:?}", old.failback).to_lowercase(),
        format!("{:?}", new.failback).to_lowercase(),
    );
    field(
        "stickiness",
        old.stickiness.to_string(),
        new.stickiness.to_string(),
    );
    field(
        "max_restarts",
        old.max_restarts.to_string(),
        new.max_restarts.to_string(),
    );
    field(
        "restart_window_secs",
        old.restart_window_secs.to_string(),
        new.restart_window_secs.to_string(),
    );
    field(
        "quarantine_secs",
        old.quarantine_secs.to_string(),
        new.quarantine_secs.to_string(),
    );
    changes.extend(describe_resources(&old.resources, &new.resources));
    format!("update group {}: {}", new.name, changes.join("; "))
}

fn describe_resources(old: &[ResourceSpec], new: &[ResourceSpec]) -> Option<String> {
    let list = |resources: &[ResourceSpec]| {
        let names: Vec<String> = resources.iter().map(ToString::to_string).collect();
        format!("[{}]", names.join(", "))
    };
    if old == new {
        return None;
    }
    let same_identities = old.len() == new.len()
        && old
            .iter()
            .zip(new)
            .all(|(a, b)| a.to_string() == b.to_string());
    if !same_identities {
        return Some(format!("resources {} -> {}", list(old), list(new)));
    }
    let changed: Vec<String> = old
        .iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(index, (_, b))| format!("resource {index} ({b}) settings changed"))
        .collect();
    Some(changed.join("; "))
}

/// `1 GiB`, `512 MiB`, or bytes when not a whole number of a binary unit.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// A state for the tests of this module and of `group_plan`: voters `a` (1) and `b` (2),
/// witness `w` (3), no volumes, no groups.
#[cfg(test)]
pub(crate) fn fixture_state() -> ClusterState {
    use crate::state::{Admin, NodeInfo};
    let node = |id: NodeId, name: &str, role: Role| NodeInfo {
        id,
        name: name.into(),
        addr: format!("127.0.0.{id}:7000"),
        site: None,
        role,
        admin: Admin::Online,
    };
    let mut state = ClusterState::founded_by(crate::ClusterId([7; 16]), node(1, "a", Role::Voter));
    state.nodes.insert(2, node(2, "b", Role::Voter));
    state.nodes.insert(3, node(3, "w", Role::Witness));
    state.next_node_id = 4;
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> (String, String) {
        let path = format!("{}/tests/apply_files/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("test file");
        (path, text)
    }

    fn parse_file(name: &str) -> Result<ClusterFile, ParseError> {
        let (path, text) = file(name);
        parse_cluster(&path, &text)
    }

    /// Applies every step of a plan, as the daemon would commit them.
    fn apply_all(state: &mut ClusterState, plan: &ApplyPlan) {
        for step in &plan.steps {
            let change = change_for(state, &step.command).expect(&step.description);
            state.apply(&change).expect(&step.description);
        }
    }

    #[test]
    fn the_good_file_parses_and_round_trips() {
        let parsed = parse_file("good.toml").unwrap();
        assert_eq!(parsed.volumes.len(), 1);
        assert_eq!(parsed.volumes[0].size, 64 << 20);
        assert_eq!(parsed.volumes[0].legs[1].nodes, ["b"]);
        let web = &parsed.groups[0];
        assert_eq!(web.preferred, ["a", "b"]);
        assert_eq!(web.failback, Failback::Auto);
        assert_eq!(web.resources.len(), 4);
        assert_eq!(web.resources[2].monitor().interval_ms(), 5000);
        assert!(!parsed.groups[1].enabled);
        assert_eq!(parsed.groups[1].max_restarts, DEFAULT_MAX_RESTARTS);
        let text = toml::to_string(&parsed).unwrap();
        assert_eq!(parse_cluster("again.toml", &text).unwrap(), parsed);
        let command = Command::ApplyPlan {
            file: parsed.clone(),
            prune: false,
        };
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    }

    #[test]
    fn bad_files_are_refused_with_file_line_column_and_key() {
        let error = parse_file("unknown_key.toml").unwrap_err();
        assert_eq!((error.line, error.column), (16, 1), "{error}");
        assert!(
            error.message.contains("unknown field `mountpoit`"),
            "{error}"
        );
        assert!(
            error.to_string().contains("unknown_key.toml:16:1: "),
            "{error}"
        );
        let error = parse_file("unknown_table.toml").unwrap_err();
        assert_eq!(error.line, 6, "{error}");
        assert!(error.message.contains("unknown field `timing`"), "{error}");
        let error = parse_file("bad_size.toml").unwrap_err();
        assert_eq!((error.line, error.column), (3, 8), "{error}");
        assert!(error.message.contains("unknown unit"), "{error}");
        let error = parse_file("bad_cidr.toml").unwrap_err();
        assert_eq!(error.line, 1, "{error}");
        assert!(
            error
                .message
                .contains("group web, resource 0 (ip 10.0.0.300/24)"),
            "{error}"
        );
        let error = parse_cluster("x.toml", "[[volume]]\nname = 'v'\nsize = -1\nlegs = []\n");
        assert!(error.unwrap_err().message.contains("negative"));
        let error = parse_cluster("x.toml", "[[volume]]\nname = 'v'\nsize = 1\nlegs = ['a']\n");
        assert!(error.unwrap_err().message.contains("NODE[,NODE...]:PATH"));
        let twice = "[[group]]\nname='g'\n[[group.resource]]\ntype='volume'\nvolume='v'\n";
        let error = parse_cluster("x.toml", &twice.repeat(2)).unwrap_err();
        assert_eq!(error.line, 6, "{error}");
        assert!(
            error.message.contains("group g is declared twice"),
            "{error}"
        );
        let error = parse_cluster("x.toml", "[[group\n").unwrap_err();
        assert_eq!(error.line, 1, "{error}");
    }

    #[test]
    fn a_single_group_file_parses_at_the_top_level() {
        let text =
            "name = 'web'\npreferred = ['b']\n[[resource]]\ntype = 'ip'\ncidr = '10.1.0.9/16'\n";
        let def = parse_group("web.toml", text).unwrap();
        assert_eq!(def.preferred, ["b"]);
        assert_eq!(def.resources.len(), 1);
        let error = parse_group("web.toml", "name = 'web'\nresources = []\n").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("web.toml:2:1: unknown field `resources`"),
            "{error}"
        );
    }

    #[test]
    fn a_group_on_a_missing_volume_is_refused_by_the_plan() {
        let desired = parse_file("missing_volume.toml").unwrap();
        let error = plan(&fixture_state(), &desired, false).unwrap_err();
        assert!(
            error.contains("group web, resource 0 (volume nope): volume nope does not exist"),
            "{error}"
        );
    }

    #[test]
    fn granularities_come_from_the_file_and_bad_ones_are_refused_by_the_plan() {
        let state = fixture_state();
        let text = "[[volume]]\nname = 'v'\nsize = '64M'\nlegs = ['a:/l/v']\n\
                    bitmap_grain = '64K'\nal_extent = '1M'\n";
        let desired = parse_cluster("x.toml", text).unwrap();
        assert_eq!(desired.volumes[0].bitmap_grain, 64 << 10);
        assert_eq!(desired.volumes[0].al_extent, 1 << 20);
        let made = plan(&state, &desired, false).unwrap();
        let mut applied = state.clone();
        apply_all(&mut applied, &made);
        let volume = applied.volume_by_name("v").unwrap();
        assert_eq!(volume.granularity.bitmap_grain, 64 << 10);
        assert_eq!(volume.granularity.al_extent, 1 << 20);
        let bad = text.replace("'64K'", "'3000'");
        let error = plan(&state, &parse_cluster("x.toml", &bad).unwrap(), false).unwrap_err();
        assert!(
            error.contains("bitmap grain 3000 must be a power of two"),
            "{error}"
        );
    }

    #[test]
    fn the_plan_creates_volumes_before_groups_and_a_second_plan_is_empty() {
        let mut state = fixture_state();
        let desired = parse_file("good.toml").unwrap();
        let first = plan(&state, &desired, false).unwrap();
        let lines: Vec<&str> = first.steps.iter().map(|s| s.description.as_str()).collect();
        assert_eq!(
            lines,
            [
                "create volume db (64 MiB, legs a:/var/lib/tandem-legs/db.img, \
                 b:/var/lib/tandem-legs/db.img)",
                "create group web (volume db, filesystem /srv/db, ip 10.0.0.5/24, exec \
                 /usr/bin/python3), preferred a,b",
                "create group batch (ocf heartbeat:Dummy), disabled",
            ]
        );
        assert_eq!(state, fixture_state(), "planning changes nothing");
        apply_all(&mut state, &first);
        assert_eq!(state.groups["web"].spec.preferred, vec![1, 2]);
        let again = plan(&state, &desired, false).unwrap();
        assert_eq!(again, ApplyPlan::default());
    }

    #[test]
    fn changed_groups_are_updated_and_changed_volumes_refused() {
        let mut state = fixture_state();
        let mut desired = parse_file("good.toml").unwrap();
        let first = plan(&state, &desired, false).unwrap();
        apply_all(&mut state, &first);
        desired.groups[0].preferred = vec!["b".into(), "a".into()];
        desired.groups[0].failback = Failback::Manual;
        desired.groups[1].resources[0] = ResourceSpec::Ip {
            cidr: "10.0.0.6/24".into(),
            interface: None,
            monitor: Default::default(),
        };
        let update = plan(&state, &desired, false).unwrap();
        let lines: Vec<&str> = update
            .steps
            .iter()
            .map(|s| s.description.as_str())
            .collect();
        assert_eq!(
            lines,
            [
                "update group web: preferred a,b -> b,a; failback auto -> manual",
                "update group batch: resources [ocf heartbeat:Dummy] -> [ip 10.0.0.6/24]",
            ]
        );
        apply_all(&mut state, &update);
        assert_eq!(state.groups["web"].spec.preferred, vec![2, 1]);
        desired.volumes[0].size = 128 << 20;
        let error = plan(&state, &desired, false).unwrap_err();
        assert!(
            error.contains("volume db: changing its size (64 MiB -> 128 MiB) is not supported yet"),
            "{error}"
        );
        desired.volumes[0].size = 64 << 20;
        desired.volumes[0].legs[1].path = "/elsewhere".into();
        let error = plan(&state, &desired, false).unwrap_err();
        assert!(error.contains("changing its legs"), "{error}");
        desired.volumes[0].legs[1].path = "/var/lib/tandem-legs/db.img".into();
        desired.volumes[0].bitmap_grain = 64 << 10;
        let error = plan(&state, &desired, false).unwrap_err();
        assert!(
            error.contains("changing its bitmap grain or activity-log extent (4 KiB / 4 MiB -> 64 KiB / 4 MiB)"),
            "{error}"
        );
        desired.volumes[0].bitmap_grain = 4 << 10;
        desired.groups[0].preferred = vec!["w".into()];
        let error = plan(&state, &desired, false).unwrap_err();
        assert!(error.contains("preferred node w is a witness"), "{error}");
    }

    #[test]
    fn what_the_file_drops_is_kept_unless_pruned() {
        let mut state = fixture_state();
        let full = parse_file("good.toml").unwrap();
        let first = plan(&state, &full, false).unwrap();
        apply_all(&mut state, &first);
        let empty = ClusterFile::default();
        let kept = plan(&state, &empty, false).unwrap();
        assert!(kept.steps.is_empty());
        assert_eq!(kept.notes.len(), 3, "{:?}", kept.notes);
        assert!(kept.notes[0].contains("group batch is not in the file: kept"));
        let placed = crate::group::GroupChange::Placed {
            group: "web".into(),
            node: Some(1),
            epoch: 0,
        };
        state.apply(&StateChange::Group(placed)).unwrap();
        let pruned = plan(&state, &empty, true).unwrap();
        let lines: Vec<&str> = pruned
            .steps
            .iter()
            .map(|s| s.description.as_str())
            .collect();
        assert_eq!(
            lines,
            [
                "delete group batch (not in the file; --prune)",
                "disable group web (not in the file; --prune)",
            ]
        );
        assert!(
            pruned.notes[0].contains("group web is placed on a"),
            "{:?}",
            pruned.notes
        );
        assert!(
            pruned.notes[1].contains("not planned: delete volume db"),
            "{:?}",
            pruned.notes
        );
        assert!(
            pruned.notes[1].contains("used by group web"),
            "{:?}",
            pruned.notes
        );
        apply_all(&mut state, &pruned);
        state.groups.get_mut("web").unwrap().status.node = None;
        let rest = plan(&state, &empty, true).unwrap();
        let lines: Vec<&str> = rest.steps.iter().map(|s| s.description.as_str()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("delete group web"));
        assert!(lines[1].starts_with("delete volume db"));
        apply_all(&mut state, &rest);
        assert!(state.groups.is_empty() && state.volumes.is_empty());
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(512 << 20), "512 MiB");
        assert_eq!(human_size(4097), "4097 bytes");
    }
}
