//! Packet faults: egress decided at TC on the devices of the target's network namespace, from the
//! cgroup of the packet's socket; ingress decided at `cgroup_skb` on the target cgroup. Neither
//! reads or writes `skb->mark`.

mod cgroup_skb;
mod parse;
mod tc;
