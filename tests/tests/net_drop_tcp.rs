//! `chaos net drop` with TCP: a bulk transfer completes, and the sender's TCP saw the loss as on a
//! lossy network (retransmissions), not as a local "not sent".

use std::time::Duration;

use chaos_tests::*;

const BYTES: u64 = 16 << 20;
const T: Duration = Duration::from_secs(120);

fn transfer(sb: &Sandbox, from: Place, port: u16) -> Value {
    let mut sink = sb.spawn(Place::Server, &["tcp-sink", "--bind", &format!("0.0.0.0:{port}")]);
    sink.ready();
    let sent = sb.spawn(from, &["tcp-send", "--to", &format!("{SERVER_V4}:{port}"), "--bytes", &BYTES.to_string()]).json(T);
    let got = sink.json(T);
    assert_eq!(got["bytes"], BYTES, "the sink received everything");
    assert_eq!(sent["bytes"], BYTES);
    sent
}

#[test]
fn tcp_bulk_transfer_completes_with_retransmissions() {
    let sb = Sandbox::new();
    let mut args: Vec<String> = ["net", "drop", "--percent", "5", "--proto", "tcp", "--for", "120s", "--json"].map(String::from).to_vec();
    args.extend(sb.target_args());
    let chaos = start_chaos(&args);

    let target = transfer(&sb, Place::Target, 5401);
    let retrans = target["retransmits"].as_u64().expect("retransmits");
    assert!(retrans > 0, "no retransmissions: the sender's TCP did not see a wire-like loss ({target})");

    // The bystander's transfer completes (transfer() checks every byte arrived). Its
    // retransmission count is not asserted: an unpaced 16 MiB burst over a veth can overflow the
    // receive backlog of a busy machine, a real loss chaos has no part in. That chaos takes nothing
    // but what its cgroup program selected is asserted below, and exactly in the paced UDP test.
    transfer(&sb, Place::Bystander, 5402);

    let (_, matched, selected, dropped) = rule0(&stop_chaos(chaos));
    assert!(dropped > 0 && matched > dropped, "matched {matched} dropped {dropped}");
    assert_eq!(selected, dropped, "the device program took exactly the packets the cgroup program selected");
}
