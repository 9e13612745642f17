//! Benchmark: after `kill -9` of the leader of a real 3-node cluster, how long until a new
//! leader is elected, and until the dead node is shown offline? Prints min/median/max over
//! `--runs N` kills (default 10). Not a test: it asserts nothing about speed.

use std::time::{Duration, Instant};

use tandem_tests::{wait_for, TestCluster};

fn main() {
    let runs: usize = std::env::args()
        .skip_while(|arg| arg != "--runs")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let names = ["a", "b", "c"];
    let mut cluster = TestCluster::form("bench-election", &names, &[]);
    let (mut elections, mut detections) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let leader_id = cluster.wait_leader("a");
        let status = cluster.node("a").status().expect("status");
        let leader = cluster.name_of(&status, leader_id);
        let watchers: Vec<&str> = names.iter().copied().filter(|&n| n != leader).collect();
        cluster.kill(&leader);
        let killed = Instant::now();
        let (mut elected, mut offline) = (None, None);
        wait_for(
            "new leader and offline detection",
            Duration::from_secs(30),
            || {
                for watcher in &watchers {
                    let Some(status) = cluster.node(watcher).status() else {
                        continue;
                    };
                    let new_leader = status["leader"].as_u64().is_some_and(|id| id != leader_id);
                    if new_leader && elected.is_none() {
                        elected = Some(killed.elapsed());
                    }
                    let dead_offline = status["nodes"]
                        .as_array()
                        .and_then(|nodes| nodes.iter().find(|n| n["id"] == leader_id))
                        .is_some_and(|n| n["online"] == false);
                    if dead_offline && offline.is_none() {
                        offline = Some(killed.elapsed());
                    }
                }
                (elected.is_some() && offline.is_some()).then_some(())
            },
        );
        let (elected, offline) = (elected.unwrap_or_default(), offline.unwrap_or_default());
        println!("run {run:>2}: killed {leader}: new leader after {:>5} ms, shown offline after {:>5} ms", elected.as_millis(), offline.as_millis());
        elections.push(elected);
        detections.push(offline);
        cluster.start(&leader);
        cluster.wait_online("a", 3);
        cluster.wait_online("b", 3);
        cluster.wait_online("c", 3);
        std::thread::sleep(Duration::from_millis(500));
    }
    println!();
    println!(
        "{:<34} {:>8} {:>8} {:>8}",
        "after kill -9 of the leader", "min", "median", "max"
    );
    summary("new leader elected (ms)", &mut elections);
    summary("dead node shown offline (ms)", &mut detections);
}

fn summary(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_millis();
    println!(
        "{:<34} {:>8} {:>8} {:>8}",
        label,
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
}
