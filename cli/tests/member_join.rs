//! Growing and shrinking a running cluster the way etcd's operators do, through the
//! `etcd-client` crate: MemberAdd a learner, start it with `--initial-cluster-state
//! existing`, promote it once it caught up, then survive the loss of an original member (a
//! follower in one test, the leader in the other) and MemberRemove it. Three processes on
//! OS-chosen loopback ports, plus the fourth.

mod common;

use common::{PATIENCE, ProcessCluster, eventually};
use etcd_client::{Client, GetOptions, MemberAddOptions};
use std::time::{Duration, Instant};

async fn client(endpoints: &[String]) -> Option<Client> {
    Client::connect(endpoints, None).await.ok()
}

/// A three-member cluster grown to four voters the way etcd's operators do it: MemberAdd a
/// learner, start it, let it catch up, promote it, and wait until every founder lists four
/// voters. Returns the cluster, the founders' endpoints, and the joined member's endpoint
/// and etcd id.
async fn grow_to_four_voters() -> (ProcessCluster, Vec<String>, (String, u64)) {
    let mut cluster = ProcessCluster::start(3);
    let founders = cluster.endpoints.clone();
    let written = eventually("the cluster takes a write", || async {
        let mut client = client(&founders).await?;
        client.put("before", "join", None).await.ok()
    })
    .await;
    assert!(written.header().unwrap().revision() > 0);

    // Announce the learner, then start it.
    let peer_url = cluster.next_peer_url();
    let added = eventually("MemberAdd is accepted", || async {
        let mut client = client(&founders).await?;
        client
            .member_add(
                [peer_url.as_str()],
                Some(MemberAddOptions::new().with_is_learner()),
            )
            .await
            .ok()
    })
    .await;
    let learner = added.member().expect("the added member").clone();
    assert!(learner.is_learner());
    assert_eq!(added.member_list().len(), 4);
    let index = cluster.join(&peer_url);
    let joined = cluster.endpoints[index].clone();

    // The learner catches up: it serves the earlier write from its own copy.
    eventually("the learner has the data", || async {
        let mut client = client(std::slice::from_ref(&joined)).await?;
        let response = client
            .get("before", Some(GetOptions::new().with_serializable()))
            .await
            .ok()?;
        (response.kvs().first()?.value() == b"join").then_some(())
    })
    .await;

    // Promotion is accepted once it is in sync (it may be refused while it lags).
    eventually("MemberPromote is accepted", || async {
        let mut client = client(&founders).await?;
        client.member_promote(learner.id()).await.ok()
    })
    .await;
    // Every member learns the promotion (MemberList answers from the member's own copy).
    eventually("every member lists four voters", || async {
        for endpoint in &founders {
            let mut client = client(std::slice::from_ref(endpoint)).await?;
            let list = client.member_list().await.ok()?;
            let promoted = list.members().len() == 4
                && list.members().iter().all(|member| !member.is_learner());
            if !promoted {
                return None;
            }
        }
        Some(())
    })
    .await;
    // The joined member goes by the id MemberAdd gave it.
    let mut own = client(std::slice::from_ref(&joined))
        .await
        .expect("the joined member");
    let status = own.status().await.expect("its status");
    assert_eq!(status.header().unwrap().member_id(), learner.id());
    (cluster, founders, (joined, learner.id()))
}

/// A founder (index and etcd id) that leads, or that follows a known leader, by its Status.
async fn founder_that(founders: &[String], leads: bool) -> (usize, u64) {
    let what = if leads {
        "a founder that leads"
    } else {
        "a founder that follows a known leader"
    };
    eventually(what, || async {
        for (index, endpoint) in founders.iter().enumerate() {
            let mut client = client(std::slice::from_ref(endpoint)).await?;
            let status = client.status().await.ok()?;
            let own = status.header()?.member_id();
            let found = if leads {
                status.leader() == own
            } else {
                status.leader() != 0 && status.leader() != own
            };
            if found {
                return Some((index, own));
            }
        }
        None
    })
    .await
}

/// Kills founder `victim` (etcd id `lost`), then checks that each of the other three takes
/// a write sent to it alone (a follower forwards it to the leader, whichever member that
/// is), that they agree on the leader, remove the lost member, and serve linearizable
/// reads on the joined member. Returns whether the joined member led after the loss.
async fn survive_the_loss_of(
    mut cluster: ProcessCluster,
    joined: (String, u64),
    victim: usize,
    lost: u64,
) -> bool {
    cluster.kill(victim);
    let survivors: Vec<String> = cluster
        .endpoints
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != victim)
        .map(|(_, endpoint)| endpoint.clone())
        .collect();
    for (index, endpoint) in survivors.iter().enumerate() {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let attempt = async {
                let mut client = client(std::slice::from_ref(endpoint)).await?;
                client
                    .put(format!("after-{index}"), "loss", None)
                    .await
                    .ok()
            };
            if attempt.await.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let mut statuses = Vec::new();
                for endpoint in &survivors {
                    if let Some(mut client) = client(std::slice::from_ref(endpoint)).await {
                        statuses.push(format!("{endpoint}: {:?}", client.status().await));
                    }
                }
                panic!(
                    "{endpoint} took no write within {PATIENCE:?} after losing one of four: \
                     {statuses:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every survivor names the same leader by its etcd id (the joined member included).
    let leader = eventually("the survivors agree on a leader", || async {
        let mut leaders = Vec::new();
        for endpoint in &survivors {
            let mut client = client(std::slice::from_ref(endpoint)).await?;
            leaders.push(client.status().await.ok()?.leader());
        }
        (leaders[0] != 0 && leaders.iter().all(|leader| *leader == leaders[0]))
            .then_some(leaders[0])
    })
    .await;
    eventually("MemberRemove is accepted", || async {
        let mut client = client(&survivors).await?;
        client.member_remove(lost).await.ok()
    })
    .await;
    let listed = eventually("the survivors list three members", || async {
        let mut client = client(&survivors).await?;
        let list = client.member_list().await.ok()?;
        (list.members().len() == 3).then_some(list)
    })
    .await;
    assert!(listed.members().iter().all(|member| member.id() != lost));
    for index in 0..survivors.len() {
        let read = eventually("a linearizable read on the new member", || async {
            let mut client = client(std::slice::from_ref(&joined.0)).await?;
            client.get(format!("after-{index}"), None).await.ok()
        })
        .await;
        assert_eq!(read.kvs()[0].value(), b"loss");
    }
    leader == joined.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_learner_and_two_founders_survive_the_loss_of_a_follower() {
    let (cluster, founders, joined) = grow_to_four_voters().await;
    let (victim, lost) = founder_that(&founders, false).await;
    survive_the_loss_of(cluster, joined, victim, lost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_learner_and_two_founders_survive_the_loss_of_the_leader() {
    let (cluster, founders, joined) = grow_to_four_voters().await;
    // Right after the promotion (the configuration may still be joint). The joined member
    // wins the next election in about a third of the runs; then the founders must learn
    // its client URL from the configuration to forward writes to it.
    let (victim, lost) = founder_that(&founders, true).await;
    let joined_leads = survive_the_loss_of(cluster, joined, victim, lost).await;
    eprintln!("after losing the leader, the joined member leads: {joined_leads}");
}
