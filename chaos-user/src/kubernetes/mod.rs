//! Kubernetes: the `ChaosFault` custom resource and the controller `chaos agent --kubernetes`
//! runs on every node (deploy/kubernetes/ has the manifests).
//!
//! Each node's agent watches every `ChaosFault` and the pods scheduled on its own node, chooses the
//! resource's pods (the same choice on every node), and holds one session per resource with the
//! faults on its chosen local pods (the fault file's `pod = "<uid>"` target, resolved through the
//! kubelet's cgroup layouts), reporting under `status.nodes.<node>`.

pub mod controller;
pub mod injector;
pub mod plan;
pub mod pods;
pub mod resource;

use std::sync::Arc;

pub use controller::Config;
pub use injector::Injector;
pub use resource::{
    ChaosFault, ChaosFaultSpec, ChaosFaultStatus, FaultCounters, Mode, NodeStatus, Phase,
};

/// The controller of node `node` with the agent's sessions, against the cluster of
/// `kube::Client::try_default()` (KUBECONFIG, or the pod's service account in the cluster).
pub async fn serve(node: String, sessions: Arc<crate::agent::Sessions>) -> anyhow::Result<()> {
    // kube's error already names every source it tried; one line, not its chain repeated.
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the Kubernetes API ({e}): set KUBECONFIG, or run in a pod with a service account"
        )
    })?;
    sessions.set_node(node.clone());
    controller::run(client, Config::new(node), sessions).await
}
