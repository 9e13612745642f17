//! A one-node cluster: its leader is a quorum by itself, so it must hold its leader lease
//! (and with it the right to write and run services) without any peer answering pings.

use tandem_core::state::{Admin, NodeInfo, Role};
use tandem_core::{bootstrap, Action, ClusterId, NodeCore, Timing};

#[test]
fn a_lone_voter_holds_its_node_lease_and_after_the_blackout_its_leader_lease() {
    let info = NodeInfo {
        id: 1,
        name: "solo".into(),
        addr: "127.0.0.1:1".into(),
        site: None,
        role: Role::Voter,
        admin: Admin::Online,
    };
    let cluster = ClusterId([9; 16]);
    let durable = bootstrap(cluster, info);
    let timing = Timing::default();
    let mut core = NodeCore::restore(cluster, 1, durable, timing, 0).expect("restores");
    core.seed_elections(42);
    let (mut leased_at, mut leader_lease_at) = (None, None);
    for step in 0..1_000u64 {
        let now = step * 10;
        core.tick(now);
        for action in core.take_actions() {
            if let Action::Persist { number, .. } = action {
                core.persisted(number);
            }
        }
        if core.holds_node_lease(now) && leased_at.is_none() {
            leased_at = Some(now);
        }
        if core.holds_leader_lease(now) {
            leader_lease_at = Some(now);
            break;
        }
    }
    let leased_at = leased_at.expect("the lone leader never held its node lease within 10 s");
    let leader_lease_at = leader_lease_at.expect("nor its leader lease");
    assert!(core.is_leader());
    // It may run services at once (it is the quorum), but decides about other nodes only
    // after the blackout a new leader owes any earlier leader's lease.
    assert!(
        leader_lease_at >= timing.lease_timeout_ms,
        "leader lease at {leader_lease_at} ms"
    );
    assert!(leased_at <= leader_lease_at);
    assert!(core.node_lease_remaining(leader_lease_at) > 0);
}
