//! What the controller needs from the node's sessions, as a trait: the agent's
//! [`Sessions`](crate::agent::Sessions) in `chaos agent --kubernetes`, a recording fake in tests.

use std::future::Future;

use crate::agent::{ApiError, SessionInfo, Sessions, StartRequest};

/// Starts, reads and stops the sessions that carry a resource's faults on this node.
pub trait Injector: Send + Sync + 'static {
    /// Starts a session of the fault file `req.faults`; returns once it injects, or the engine's
    /// one-line error (a table it refuses, a pod whose cgroup is not on this node, ...).
    fn start(
        &self,
        req: StartRequest,
    ) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send;
    /// Ends a session and returns it with its final counters.
    fn stop(&self, id: &str) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send;
    /// A session with its live counters, or None if the agent does not know it.
    fn get(&self, id: &str) -> impl Future<Output = Option<SessionInfo>> + Send;
    /// Every session the agent holds (the controller ends its predecessor's at its start).
    fn list(&self) -> impl Future<Output = Vec<SessionInfo>> + Send;
}

impl Injector for Sessions {
    fn start(
        &self,
        req: StartRequest,
    ) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send {
        Sessions::start(self, req)
    }

    fn stop(&self, id: &str) -> impl Future<Output = Result<SessionInfo, ApiError>> + Send {
        Sessions::stop(self, id)
    }

    fn get(&self, id: &str) -> impl Future<Output = Option<SessionInfo>> + Send {
        Sessions::get(self, id)
    }

    fn list(&self) -> impl Future<Output = Vec<SessionInfo>> + Send {
        Sessions::list(self)
    }
}
