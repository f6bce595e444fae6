//! The `ChaosFault` custom resource (`chaos.dev/v1alpha1`): which pods, which faults, how long,
//! and each node's account of what it did. deploy/kubernetes/crd.yaml is this type serialized
//! (`ChaosFault::crd()`; a test keeps the file and the type the same).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Faults for the pods a label selector picks, for `duration` counted from the resource's
/// creation. Every node's agent acts on the chosen pods scheduled on its own node.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "chaos.dev",
    version = "v1alpha1",
    kind = "ChaosFault",
    namespaced,
    status = "ChaosFaultStatus",
    shortname = "cf",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".spec.duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChaosFaultSpec {
    /// The pods of this resource's namespace whose labels match (matchLabels, matchExpressions).
    pub selector: LabelSelector,
    /// Only pods on nodes with all these labels (as a pod's own nodeSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// all: every matching pod; one: a single pod; fixed: `value` pods; percent: `value` percent
    /// of them (rounded up). The choice is the same on every node: a hash seeded by this
    /// resource's uid over every matching pod of the cluster.
    #[serde(default)]
    pub mode: Mode,
    /// N for `mode: fixed`, P (1-100) for `mode: percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// How long the faults last, counted from the resource's creation ("30s", "5m", at most 24h).
    pub duration: String,
    /// The `[[fault]]` tables of a fault file, without a target (the chosen pods are the target):
    /// `kind` and that kind's keys (percent, proto, syscall, errno, after, for, ...). A table's
    /// `after` and `for` count from the resource's creation too.
    #[schemars(schema_with = "fault_tables_schema")]
    pub faults: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// How many of the matching pods are chosen.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    All,
    One,
    Fixed,
    Percent,
}

/// Each node's account, under its own key so agents never overwrite each other (each writes
/// `status.nodes.<node>` with a merge patch).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ChaosFaultStatus {
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeStatus>,
}

/// What one node's agent does for the resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub phase: Phase,
    /// The chosen pods on this node, by name.
    #[serde(default)]
    pub pods: Vec<String>,
    /// The agent's session (`chaos status` on the node lists it).
    #[serde(default)]
    pub session: Option<String>,
    /// Each rule's kernel counters (one rule per fault table and container cgroup).
    #[serde(default)]
    pub faults: Vec<FaultCounters>,
    /// Why the phase is Failed, in one line.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// The faults are in place on this node's chosen pods.
    Injecting,
    /// The duration has passed (or the session was stopped on the node); nothing is in place.
    Finished,
    /// The faults could not be put in place: `message` says why. Retried only when the resource
    /// or the set of chosen pods changes.
    Failed,
}

/// One rule's counters, as `chaos status` reads them from the kernel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct FaultCounters {
    pub kind: String,
    pub cgroup: String,
    pub seen: u64,
    pub matched: u64,
    pub injected: u64,
}

/// A fault table is a free-form object whose keys depend on its kind: kept as written
/// (`x-kubernetes-preserve-unknown-fields`), checked by the agent with the fault file parser.
fn fault_tables_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "required": ["kind"],
            "properties": { "kind": { "type": "string" } },
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}
