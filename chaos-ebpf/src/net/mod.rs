//! Packet faults: per-cgroup decision in `cgroup_skb`, wire-like egress loss in TC.

mod cgroup_skb;
mod maps;
mod parse;
mod tc;
