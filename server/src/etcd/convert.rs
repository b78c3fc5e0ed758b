//! Field-by-field translation between etcd's wire messages (`crate::api`) and the MVCC
//! state machine's requests and responses (`synod_protocols::mvcc::api`). The two are
//! shaped alike on purpose; what needs care is enums (unknown numbers are refused, not
//! guessed) and etcd's oneofs.

use crate::api::{etcdserverpb as pb, mvccpb};
use synod_protocols::mvcc::api as mvcc;
use synod_protocols::mvcc::watch as mvcc_watch;
use tonic::Status;

/// A request field that etcd would also refuse.
fn invalid(what: &str) -> Status {
    Status::invalid_argument(format!("etcdserver: {what}"))
}

pub fn key_value(kv: mvcc::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_request(request: pb::RangeRequest) -> Result<mvcc::RangeRequest, Status> {
    let sort_order = match pb::range_request::SortOrder::try_from(request.sort_order) {
        Ok(pb::range_request::SortOrder::None) => mvcc::SortOrder::None,
        Ok(pb::range_request::SortOrder::Ascend) => mvcc::SortOrder::Ascend,
        Ok(pb::range_request::SortOrder::Descend) => mvcc::SortOrder::Descend,
        Err(_) => return Err(invalid("unknown sort order")),
    };
    let sort_target = match pb::range_request::SortTarget::try_from(request.sort_target) {
        Ok(pb::range_request::SortTarget::Key) => mvcc::SortTarget::Key,
        Ok(pb::range_request::SortTarget::Version) => mvcc::SortTarget::Version,
        Ok(pb::range_request::SortTarget::Create) => mvcc::SortTarget::Create,
        Ok(pb::range_request::SortTarget::Mod) => mvcc::SortTarget::Mod,
        Ok(pb::range_request::SortTarget::Value) => mvcc::SortTarget::Value,
        Err(_) => return Err(invalid("unknown sort target")),
    };
    Ok(mvcc::RangeRequest {
        key: request.key,
        range_end: request.range_end,
        limit: request.limit,
        revision: request.revision,
        sort_order,
        sort_target,
        serializable: request.serializable,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

pub fn range_response(
    response: mvcc::RangeResponse,
    header: pb::ResponseHeader,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

pub fn put_request(request: pb::PutRequest) -> mvcc::PutRequest {
    mvcc::PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

pub fn put_response(response: mvcc::PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: response.prev_kv.map(key_value),
    }
}

pub fn delete_request(request: pb::DeleteRangeRequest) -> mvcc::DeleteRangeRequest {
    mvcc::DeleteRangeRequest {
        key: request.key,
        range_end: request.range_end,
        prev_kv: request.prev_kv,
    }
}

pub fn delete_response(
    response: mvcc::DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
    }
}

fn compare(compare: pb::Compare) -> Result<mvcc::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => mvcc::CompareResult::Equal,
        Ok(CompareResult::Greater) => mvcc::CompareResult::Greater,
        Ok(CompareResult::Less) => mvcc::CompareResult::Less,
        Ok(CompareResult::NotEqual) => mvcc::CompareResult::NotEqual,
        Err(_) => return Err(invalid("unknown compare result")),
    };
    // etcd reads the operand from the oneof that matches the target; an absent operand is
    // the zero value of that target's type.
    let union = compare.target_union;
    let target = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Version) => mvcc::CompareTarget::Version(match union {
            Some(TargetUnion::Version(version)) => version,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => mvcc::CompareTarget::Create(match union {
            Some(TargetUnion::CreateRevision(revision)) => revision,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => mvcc::CompareTarget::Mod(match union {
            Some(TargetUnion::ModRevision(revision)) => revision,
            _ => 0,
        }),
        Ok(CompareTarget::Value) => mvcc::CompareTarget::Value(match union {
            Some(TargetUnion::Value(value)) => value,
            _ => Vec::new(),
        }),
        Ok(CompareTarget::Lease) => mvcc::CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(lease)) => lease,
            _ => 0,
        }),
        Err(_) => return Err(invalid("unknown compare target")),
    };
    Ok(mvcc::Compare {
        result,
        target,
        key: compare.key,
        range_end: compare.range_end,
    })
}

fn request_op(op: pb::RequestOp) -> Result<mvcc::RequestOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(range)) => mvcc::RequestOp::Range(range_request(range)?),
        Some(Request::RequestPut(put)) => mvcc::RequestOp::Put(put_request(put)),
        Some(Request::RequestDeleteRange(delete)) => {
            mvcc::RequestOp::DeleteRange(delete_request(delete))
        }
        Some(Request::RequestTxn(txn)) => mvcc::RequestOp::Txn(txn_request(txn)?),
        None => return Err(invalid("a txn operation has no request")),
    })
}

pub fn txn_request(request: pb::TxnRequest) -> Result<mvcc::TxnRequest, Status> {
    Ok(mvcc::TxnRequest {
        compare: request
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

fn response_op(op: mvcc::ResponseOp, header: pb::ResponseHeader) -> pb::ResponseOp {
    use pb::response_op::Response;
    let response = match op {
        mvcc::ResponseOp::Range(range) => Response::ResponseRange(range_response(range, header)),
        mvcc::ResponseOp::Put(put) => Response::ResponsePut(put_response(put, header)),
        mvcc::ResponseOp::DeleteRange(delete) => {
            Response::ResponseDeleteRange(delete_response(delete, header))
        }
        mvcc::ResponseOp::Txn(txn) => Response::ResponseTxn(txn_response(txn, header)),
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

pub fn txn_response(response: mvcc::TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    pb::TxnResponse {
        header: Some(header),
        succeeded: response.succeeded,
        responses: response
            .responses
            .into_iter()
            .map(|op| response_op(op, header))
            .collect(),
    }
}

pub fn watch_create(
    request: pb::WatchCreateRequest,
) -> Result<mvcc_watch::WatchCreateRequest, Status> {
    let mut filter = mvcc_watch::WatchFilter {
        key: request.key,
        range_end: request.range_end,
        no_put: false,
        no_delete: false,
        prev_kv: request.prev_kv,
    };
    for kind in request.filters {
        match pb::watch_create_request::FilterType::try_from(kind) {
            Ok(pb::watch_create_request::FilterType::Noput) => filter.no_put = true,
            Ok(pb::watch_create_request::FilterType::Nodelete) => filter.no_delete = true,
            Err(_) => return Err(invalid("unknown watch filter")),
        }
    }
    Ok(mvcc_watch::WatchCreateRequest {
        filter,
        start_revision: request.start_revision,
    })
}

pub fn watch_event(event: mvcc_watch::WatchEvent) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.kind {
            mvcc_watch::EventType::Put => mvccpb::event::EventType::Put as i32,
            mvcc_watch::EventType::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(key_value(event.kv)),
        prev_kv: event.prev_kv.map(key_value),
    }
}
