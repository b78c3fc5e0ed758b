//! etcd's server-side recipes: the Lock and Election services, built from KV operations
//! the way etcd builds them (an owner key per lease under the name's prefix; the oldest
//! creation revision owns the lock or leads the election; waiters wake on new revisions).

use super::services::{Shared, forward_request};
use super::{Consensus, NO_LEADER, Outcome};
use crate::api::etcdserverpb as pb;
use crate::api::v3electionpb as election;
use crate::api::v3lockpb as lock;
use std::pin::Pin;
use std::sync::Arc;
use synod_protocols::mvcc::api as mvcc;
use synod_protocols::mvcc::machine::{MvccOperation, MvccOutput};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // Every key.
}

fn owner_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.extend_from_slice(format!("/{lease:x}").as_bytes());
    key
}

/// The leader, when it is another member: recipe calls go there whole (they take several
/// steps, each of which must run on the leader).
fn elsewhere<N: Consensus>(shared: &Shared<N>) -> Option<synod_core::node::NodeId> {
    let leader = shared.proxy.observed().status.leader?;
    (leader != shared.proxy.membership().me).then_some(leader)
}

/// Runs one operation on the local node; a redirect becomes "no leader" (the client
/// retries, as etcd's clients do).
async fn run<N: Consensus>(
    shared: &Shared<N>,
    operation: MvccOperation,
) -> Result<(MvccOutput, pb::ResponseHeader), Status> {
    match shared.proxy.execute(operation).await? {
        Outcome::Done(output, header) => Ok((output, header)),
        Outcome::Redirect(_) => Err(Status::unavailable(NO_LEADER)),
    }
}

async fn range<N: Consensus>(
    shared: &Shared<N>,
    request: mvcc::RangeRequest,
) -> Result<(mvcc::RangeResponse, pb::ResponseHeader), Status> {
    match run(shared, MvccOperation::Range(request)).await? {
        (MvccOutput::Range(response), header) => Ok((response, header)),
        (other, _) => Err(Status::internal(format!("unexpected answer {other:?}"))),
    }
}

/// Creates `key` (attached to `lease`, holding `value`) unless it exists; returns its
/// creation revision.
async fn claim<N: Consensus>(
    shared: &Shared<N>,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<i64, Status> {
    let txn = mvcc::TxnRequest {
        compare: vec![mvcc::Compare::key(
            key.to_vec(),
            mvcc::CompareResult::Equal,
            mvcc::CompareTarget::Create(0),
        )],
        success: vec![mvcc::RequestOp::Put(mvcc::PutRequest {
            lease,
            ..mvcc::PutRequest::new(key.to_vec(), value.to_vec())
        })],
        failure: vec![mvcc::RequestOp::Range(mvcc::RangeRequest::key(
            key.to_vec(),
        ))],
    };
    let (output, _) = run(shared, MvccOperation::Txn(txn)).await?;
    let MvccOutput::Txn(response) = output else {
        return Err(Status::internal("unexpected answer to a txn"));
    };
    if response.succeeded {
        return Ok(response.header.revision);
    }
    match response.responses.first() {
        Some(mvcc::ResponseOp::Range(range)) if !range.kvs.is_empty() => {
            Ok(range.kvs[0].create_revision)
        }
        _ => Err(Status::internal("the owner key vanished while claiming it")),
    }
}

/// Waits until no key under `name/` was created before `revision`, i.e. `key` owns it.
async fn wait_for_turn<N: Consensus>(
    shared: &Shared<N>,
    name: &[u8],
    key: &[u8],
    revision: i64,
) -> Result<pb::ResponseHeader, Status> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut changes = shared.proxy.subscribe();
    loop {
        let (mine, _) = range(shared, mvcc::RangeRequest::key(key.to_vec())).await?;
        if mine.kvs.is_empty() {
            return Err(Status::failed_precondition(
                "the lease holding this claim expired or was revoked",
            ));
        }
        let (older, header) = range(
            shared,
            mvcc::RangeRequest {
                limit: 1,
                sort_order: mvcc::SortOrder::Descend,
                sort_target: mvcc::SortTarget::Create,
                max_create_revision: revision - 1,
                ..mvcc::RangeRequest::range(prefix.clone(), prefix_end(&prefix))
            },
        )
        .await?;
        if older.kvs.is_empty() {
            return Ok(header);
        }
        // Someone older holds it: wait until the store moves, then look again.
        if changes.changed().await.is_err() {
            return Err(Status::unavailable("etcdserver: server stopped"));
        }
    }
}

/// The Lock service.
pub struct LockService<N: Consensus>(pub Arc<Shared<N>>);

#[tonic::async_trait]
impl<N: Consensus> lock::lock_server::Lock for LockService<N> {
    async fn lock(
        &self,
        request: Request<lock::LockRequest>,
    ) -> Result<Response<lock::LockResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        if let Some(leader) = elsewhere(&self.0) {
            return lock::lock_client::LockClient::new(self.0.forwarder.channel(leader)?)
                .lock(forward_request(&metadata, request)?)
                .await;
        }
        let key = owner_key(&request.name, request.lease);
        let revision = claim(&self.0, &key, b"", request.lease).await?;
        let header = wait_for_turn(&self.0, &request.name, &key, revision).await?;
        Ok(Response::new(lock::LockResponse {
            header: Some(header),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<lock::UnlockRequest>,
    ) -> Result<Response<lock::UnlockResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        if let Some(leader) = elsewhere(&self.0) {
            return lock::lock_client::LockClient::new(self.0.forwarder.channel(leader)?)
                .unlock(forward_request(&metadata, request)?)
                .await;
        }
        let key = request.key;
        let (_, header) = run(
            &self.0,
            MvccOperation::DeleteRange(mvcc::DeleteRangeRequest::key(key)),
        )
        .await?;
        Ok(Response::new(lock::UnlockResponse {
            header: Some(header),
        }))
    }
}

/// The Election service.
pub struct ElectionService<N: Consensus>(pub Arc<Shared<N>>);

/// The election's leader key; `serializable` reads this member's applied state (for
/// Observe, which any member may serve), otherwise a linearizable read on the leader.
async fn current_leader<N: Consensus>(
    shared: &Shared<N>,
    name: &[u8],
    serializable: bool,
) -> Result<(Option<mvcc::KeyValue>, pb::ResponseHeader), Status> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let (oldest, header) = range(
        shared,
        mvcc::RangeRequest {
            limit: 1,
            sort_order: mvcc::SortOrder::Ascend,
            sort_target: mvcc::SortTarget::Create,
            serializable,
            ..mvcc::RangeRequest::range(prefix.clone(), prefix_end(&prefix))
        },
    )
    .await?;
    Ok((oldest.kvs.into_iter().next(), header))
}

/// Runs `operation` on `leader`'s key only while it still holds the election.
async fn as_leader<N: Consensus>(
    shared: &Shared<N>,
    leader: Option<election::LeaderKey>,
    operation: mvcc::RequestOp,
) -> Result<pb::ResponseHeader, Status> {
    let leader = leader.ok_or_else(|| Status::invalid_argument("election: no leader key given"))?;
    let txn = mvcc::TxnRequest {
        compare: vec![mvcc::Compare::key(
            leader.key.clone(),
            mvcc::CompareResult::Equal,
            mvcc::CompareTarget::Create(leader.rev),
        )],
        success: vec![operation],
        failure: vec![],
    };
    match run(shared, MvccOperation::Txn(txn)).await? {
        (MvccOutput::Txn(response), header) if response.succeeded => Ok(header),
        _ => Err(Status::failed_precondition("election: not leader")),
    }
}

type LeaderStream = Pin<Box<dyn Stream<Item = Result<election::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<N: Consensus> election::election_server::Election for ElectionService<N> {
    async fn campaign(
        &self,
        request: Request<election::CampaignRequest>,
    ) -> Result<Response<election::CampaignResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        if let Some(leader) = elsewhere(&self.0) {
            return election::election_client::ElectionClient::new(
                self.0.forwarder.channel(leader)?,
            )
            .campaign(forward_request(&metadata, request)?)
            .await;
        }
        let key = owner_key(&request.name, request.lease);
        let revision = claim(&self.0, &key, &request.value, request.lease).await?;
        let header = wait_for_turn(&self.0, &request.name, &key, revision).await?;
        Ok(Response::new(election::CampaignResponse {
            header: Some(header),
            leader: Some(election::LeaderKey {
                name: request.name,
                key,
                rev: revision,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<election::ProclaimRequest>,
    ) -> Result<Response<election::ProclaimResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        if let Some(leader) = elsewhere(&self.0) {
            return election::election_client::ElectionClient::new(
                self.0.forwarder.channel(leader)?,
            )
            .proclaim(forward_request(&metadata, request)?)
            .await;
        }
        let Some(leader) = request.leader.clone() else {
            return Err(Status::invalid_argument("election: no leader key given"));
        };
        let put = mvcc::RequestOp::Put(mvcc::PutRequest {
            lease: leader.lease,
            ..mvcc::PutRequest::new(leader.key.clone(), request.value)
        });
        let header = as_leader(&self.0, request.leader, put).await?;
        Ok(Response::new(election::ProclaimResponse {
            header: Some(header),
        }))
    }

    async fn leader(
        &self,
        request: Request<election::LeaderRequest>,
    ) -> Result<Response<election::LeaderResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        if let Some(leader) = elsewhere(&self.0) {
            return election::election_client::ElectionClient::new(
                self.0.forwarder.channel(leader)?,
            )
            .leader(forward_request(&metadata, request)?)
            .await;
        }
        let name = request.name;
        match current_leader(&self.0, &name, false).await? {
            (Some(kv), header) => Ok(Response::new(election::LeaderResponse {
                header: Some(header),
                kv: Some(super::convert::key_value(kv)),
            })),
            (None, _) => Err(Status::not_found("election: no leader")),
        }
    }

    type ObserveStream = LeaderStream;

    async fn observe(
        &self,
        request: Request<election::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let name = request.into_inner().name;
        let shared = self.0.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut changes = shared.proxy.subscribe();
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                match current_leader(&shared, &name, true).await {
                    Ok((Some(kv), header)) => {
                        let seen = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&seen) {
                            last = Some(seen);
                            let answer = election::LeaderResponse {
                                header: Some(header),
                                kv: Some(super::convert::key_value(kv)),
                            };
                            if sender.send(Ok(answer)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok((None, _)) => {}
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn resign(
        &self,
        request: Request<election::ResignRequest>,
    ) -> Result<Response<election::ResignResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        if let Some(node) = elsewhere(&self.0) {
            return election::election_client::ElectionClient::new(self.0.forwarder.channel(node)?)
                .resign(forward_request(&metadata, request)?)
                .await;
        }
        let leader = request.leader;
        let key = leader
            .as_ref()
            .map(|leader| leader.key.clone())
            .unwrap_or_default();
        let delete = mvcc::RequestOp::DeleteRange(mvcc::DeleteRangeRequest::key(key));
        let header = as_leader(&self.0, leader, delete).await?;
        Ok(Response::new(election::ResignResponse {
            header: Some(header),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
