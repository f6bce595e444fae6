//! Pods named through the Kubernetes API by any fault command, fault file or experiment:
//! `pod = "NAMESPACE/NAME"` and `pods = "NAMESPACE/SELECTOR"` become the UIDs the kubelet names
//! the pods' cgroups by. Only pods on this node can be reached ($NODE_NAME, or else the hostname,
//! which is the kubelet's default node name); those elsewhere are named in the error or left out.

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};

use super::{controller::candidate, plan::Candidate};
use crate::{error::Result, faults::FaultSpec, usage};

/// A pod by name or pods by label, as a fault names them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Query {
    Name { ns: String, name: String },
    Selector { ns: String, selector: String },
}

impl Query {
    /// The query of a spec's target, if it needs the API (a pod UID does not).
    fn of(spec: &FaultSpec) -> Result<Option<Query>> {
        let t = &spec.args.target;
        Ok(if let Some(v) = &t.pods {
            let (ns, selector) = split(&spec.at(), "--pods", v, "SELECTOR (e.g. shop/app=payment)")?;
            Some(Query::Selector { ns, selector })
        } else {
            t.pod.as_deref().map(|v| Query::by_name(&spec.at(), v)).transpose()?.flatten()
        })
    }

    /// `--pod NAMESPACE/NAME` (`at`: where it was written), or `None` for a UID.
    fn by_name(at: &str, pod: &str) -> Result<Option<Query>> {
        if !pod.contains('/') {
            return Ok(None);
        }
        let (ns, name) = split(at, "--pod", pod, "NAME")?;
        Ok(Some(Query::Name { ns, name }))
    }
}

/// `NAMESPACE/REST` of flag `flag`, or a usage error that says what `REST` is.
fn split(at: &str, flag: &str, v: &str, what: &str) -> Result<(String, String)> {
    match v.split_once('/') {
        Some((ns, rest)) if !ns.is_empty() && !rest.is_empty() => Ok((ns.to_string(), rest.to_string())),
        _ => Err(usage!("{at}{flag} {v:?}: expected NAMESPACE/{what}")),
    }
}

/// The UID of the pod `pod` names (`--pod` of a command with no fault, such as `chaos observe`):
/// NAMESPACE/NAME is asked of the API, and must be on this node; a UID is taken as it is.
pub fn pod_uid(pod: &str) -> Result<String> {
    let Some(query) = Query::by_name("", pod)? else { return Ok(pod.to_string()) };
    let (mut answers, _) = ask(&[Some(query)])?;
    let pods = answers.pop().expect("an answer per query").map_err(|e| usage!("{e}"))?;
    Ok(pods[0].uid.clone())
}

/// The specs with every pod named through the API replaced by its UID, each spec of `--pods`
/// becoming one spec per chosen pod (each its own rule, with its own counters). Specs that name
/// no pod that way come back as they were, and the API is not asked.
pub fn resolve(specs: Vec<FaultSpec>) -> Result<Vec<FaultSpec>> {
    let queries = specs.iter().map(Query::of).collect::<Result<Vec<_>>>()?;
    if queries.iter().all(Option::is_none) {
        return Ok(specs);
    }
    let (answers, node) = ask(&queries)?;
    let mut out = Vec::new();
    for ((spec, query), answer) in specs.into_iter().zip(&queries).zip(answers) {
        let Some(query) = query else {
            out.push(spec);
            continue;
        };
        let pods = answer.map_err(|e| usage!("{}{e}", spec.at()))?;
        if let Query::Selector { ns, selector } = query {
            let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
            eprintln!("chaos: {}pods {ns}/{selector} on this node ({node}): {}", spec.at(), names.join(", "));
        }
        for pod in &pods {
            out.push(spec.for_pod(&pod.uid)?);
        }
    }
    Ok(out)
}

/// A query's pods on this node, or what is wrong, in one line.
type Answer = std::result::Result<Vec<Candidate>, String>;

/// Each query's answer, and this node's name.
fn ask(queries: &[Option<Query>]) -> Result<(Vec<Answer>, String)> {
    let node = this_node();
    // kube is async, and a session is planned inside a runtime (an experiment's) and outside one
    // (`chaos apply`): the lookups run on a thread of their own with a runtime of their own.
    let answers = std::thread::scope(|s| {
        s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| crate::error::Error::Other(e.into()))?;
            runtime.block_on(look_up(queries, &node))
        })
        .join()
        .unwrap_or_else(|_| Err(crate::error::Error::Other(anyhow::anyhow!("the Kubernetes lookup thread panicked"))))
    })?;
    Ok((answers, node))
}

/// This node's name, as the kubelet registers it: $NODE_NAME (the downward API's, in the
/// DaemonSet), or else the hostname (the kubelet's default, lower-cased).
fn this_node() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_ascii_lowercase()))
        .unwrap_or_default()
}

/// Each query's pods on `node`, or what is wrong, in one line.
async fn look_up(queries: &[Option<Query>], node: &str) -> Result<Vec<Answer>> {
    // kube's error already names every source it tried; one line, not its chain repeated.
    let client = kube::Client::try_default().await.map_err(|e| {
        let first = queries.iter().flatten().next().map(describe).unwrap_or_default();
        usage!(
            "{first} names pods through the Kubernetes API, which cannot be reached ({e}): set KUBECONFIG, or run in a pod with a service account; or give the pod's UID (`kubectl get pod -n NAMESPACE NAME -o jsonpath='{{.metadata.uid}}'`)"
        )
    })?;
    let mut answers: Vec<Answer> = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        // Several faults on the same pods (a delay and a syscall fault, say) ask once.
        let asked = queries[..i].iter().position(|earlier| earlier.is_some() && earlier == query);
        answers.push(match (query, asked) {
            (None, _) => Ok(Vec::new()),
            (Some(_), Some(j)) => answers[j].clone(),
            (Some(q), None) => pods_of(&client, q).await.and_then(|(found, listed)| on_this_node(q, node, found, listed)),
        });
    }
    Ok(answers)
}

fn describe(q: &Query) -> String {
    match q {
        Query::Name { ns, name } => format!("--pod {ns}/{name}"),
        Query::Selector { ns, selector } => format!("--pods {ns}/{selector}"),
    }
}

/// The query's running pods on every node, and how many pods it found in all.
async fn pods_of(client: &kube::Client, q: &Query) -> std::result::Result<(Vec<Candidate>, usize), String> {
    let listed = match q {
        Query::Name { ns, name } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let pod = api.get_opt(name).await.map_err(|e| format!("asking the Kubernetes API for pod {ns}/{name}: {e}"))?;
            let pod = pod.ok_or_else(|| format!("no pod {name} in namespace {ns} of the cluster: `kubectl get pods -n {ns}` lists them"))?;
            vec![pod]
        }
        Query::Selector { ns, selector } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let list = api.list(&ListParams::default().labels(selector)).await.map_err(|e| match e {
                kube::Error::Api(s) if s.code == 400 => format!("the Kubernetes API refused the label selector {selector:?}: {}", s.message),
                e => format!("listing the pods of namespace {ns}: {e}"),
            })?;
            list.items
        }
    };
    Ok((listed.iter().filter_map(candidate).collect(), listed.len()))
}

/// The pods of `found` on `node`, or why there are none: a pod elsewhere cannot be reached from
/// here, and one that is not running has no processes to fault.
fn on_this_node(q: &Query, node: &str, found: Vec<Candidate>, listed: usize) -> std::result::Result<Vec<Candidate>, String> {
    let (mut here, elsewhere): (Vec<Candidate>, Vec<Candidate>) = found.into_iter().partition(|c| c.node == node);
    here.sort();
    if !here.is_empty() {
        return Ok(here);
    }
    let others = |pods: &[Candidate]| pods.iter().map(|c| format!("{} on {}", c.name, c.node)).collect::<Vec<_>>().join(", ");
    Err(match q {
        Query::Name { ns, name } if elsewhere.is_empty() => format!("pod {ns}/{name} is not running: `kubectl get pod -n {ns} {name}` says why"),
        Query::Name { ns, name } => format!(
            "pod {ns}/{name} runs on node {}, not on this one ({node}): run chaos there (set NODE_NAME if this node's name is not its hostname)",
            elsewhere[0].node
        ),
        Query::Selector { ns, selector } if listed == 0 => {
            format!("no pod in namespace {ns} matches {selector:?}: `kubectl get pods -n {ns} -l '{selector}'` lists them")
        }
        Query::Selector { ns, selector } if elsewhere.is_empty() => {
            format!("none of the {listed} pod(s) of namespace {ns} that match {selector:?} is running")
        }
        Query::Selector { ns, selector } => format!(
            "no pod of namespace {ns} that matches {selector:?} runs on this node ({node}); {}: run chaos there (set NODE_NAME if this node's name is not its hostname)",
            others(&elsewhere)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str) -> Candidate {
        Candidate { name: name.into(), uid: format!("uid-{name}"), node: node.into() }
    }

    fn selector() -> Query {
        Query::Selector { ns: "shop".into(), selector: "app=web".into() }
    }

    #[test]
    fn only_this_nodes_pods_are_chosen_in_name_order() {
        let found = vec![pod("web-2", "n1"), pod("web-3", "n2"), pod("web-1", "n1")];
        let chosen = on_this_node(&selector(), "n1", found, 3).unwrap();
        assert_eq!(chosen.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["web-1", "web-2"]);
    }

    #[test]
    fn no_pod_here_names_where_they_are_or_why_none() {
        let err = on_this_node(&selector(), "n1", vec![pod("web-3", "n2")], 1).unwrap_err();
        assert_eq!(err, "no pod of namespace shop that matches \"app=web\" runs on this node (n1); web-3 on n2: run chaos there (set NODE_NAME if this node's name is not its hostname)");
        let err = on_this_node(&selector(), "n1", Vec::new(), 0).unwrap_err();
        assert!(err.starts_with("no pod in namespace shop matches \"app=web\""), "{err}");
        let err = on_this_node(&selector(), "n1", Vec::new(), 2).unwrap_err();
        assert_eq!(err, "none of the 2 pod(s) of namespace shop that match \"app=web\" is running");
        let by_name = Query::Name { ns: "shop".into(), name: "web-3".into() };
        let err = on_this_node(&by_name, "n1", vec![pod("web-3", "n2")], 1).unwrap_err();
        assert!(err.starts_with("pod shop/web-3 runs on node n2, not on this one (n1)"), "{err}");
        let err = on_this_node(&by_name, "n1", Vec::new(), 1).unwrap_err();
        assert!(err.starts_with("pod shop/web-3 is not running"), "{err}");
    }
}
