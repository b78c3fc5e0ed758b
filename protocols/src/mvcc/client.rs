//! The client of an MVCC cluster: the shared leader-seeking session client
//! ([`crate::session_client`]) over [`MvccRequest`] and [`MvccResponse`].

use crate::mvcc::machine::{MvccOperation, MvccOutput, MvccRequest, MvccResponse, RequestError};
use crate::session_client::{Answer, SessionClient, SessionRequest, SessionResponse};

/// A client of a leader-based cluster running [`crate::mvcc::MvccMachine`] on nodes `N`.
pub type MvccClient<N> = SessionClient<N>;

impl SessionRequest for MvccRequest {
    type Operation = MvccOperation;

    fn numbered(sequence: u64, acknowledged_below: u64, operation: MvccOperation) -> Self {
        MvccRequest {
            sequence,
            acknowledged_below,
            operation,
        }
    }

    fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl SessionResponse for MvccResponse {
    type Output = MvccOutput;

    fn sequence(&self) -> u64 {
        self.sequence
    }

    fn into_answer(self) -> Answer<MvccOutput> {
        match self.result {
            Ok(output) => Answer::Done(output),
            Err(RequestError::NotLeader { hint }) => Answer::NotLeader { hint },
            Err(error) => Answer::Refused(error.to_string()),
        }
    }
}
