//! Raft: the production consensus protocol, generic over the replicated state machine.
