//! The etcd v3 wire types and gRPC services, generated at build time from `server/proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's storage types: `KeyValue`, `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
/// The KV, Watch, Lease, Cluster and Maintenance services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// The Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
/// The Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
