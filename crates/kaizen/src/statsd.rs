//! Optional StatsD push: every interval, per operation, the counts and mean duration since the
//! last push, as plain StatsD lines over UDP.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::outcome::Outcome;
use crate::recorder::Recorder;

/// Start a thread pushing to `addr` every `every`. Returns an error if the socket cannot be made.
pub fn spawn(recorder: Arc<Recorder>, addr: SocketAddr, every: Duration) -> std::io::Result<()> {
    let bind: SocketAddr =
        if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(std::io::Error::other)?;
    let sock = UdpSocket::bind(bind)?;
    sock.connect(addr)?;
    let weak = Arc::downgrade(&recorder);
    drop(recorder);
    std::thread::Builder::new().name("kaizen-statsd".into()).spawn(move || {
        let mut last: Vec<[u64; Outcome::COUNT]> = Vec::new();
        loop {
            std::thread::sleep(every);
            let Some(r) = weak.upgrade() else { return };
            let lines = lines(&r, &mut last);
            for chunk in lines.chunks(20) {
                let _ = sock.send(chunk.join("\n").as_bytes());
            }
        }
    })?;
    Ok(())
}

/// The StatsD lines for the counts since `last` (which is updated).
pub fn lines(r: &Recorder, last: &mut Vec<[u64; Outcome::COUNT]>) -> Vec<String> {
    let mut out = Vec::new();
    let prefix = &r.naming().metric_prefix;
    if last.len() != r.names().len() {
        last.resize(r.names().len(), [0; Outcome::COUNT]);
    }
    for (i, (name, s)) in r.ops().enumerate() {
        let tool = name.replace(['/', ':', '|', '@'], "_");
        for o in Outcome::ALL {
            let now = s.requests[o as usize].load(Ordering::Relaxed);
            let delta = now.saturating_sub(last[i][o as usize]);
            last[i][o as usize] = now;
            if delta > 0 {
                out.push(format!("{prefix}.tool.requests.{tool}.{}:{delta}|c", o.as_str()));
            }
        }
        out.push(format!("{prefix}.tool.in_flight.{tool}:{}|g", s.in_flight.load(Ordering::Relaxed)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Completion, OpSpec};

    #[test]
    fn pushes_deltas_over_udp() {
        let r = Recorder::new(
            crate::Naming::plain("svc"),
            vec![OpSpec { name: "tools/list".into(), method: "tools/list".into(), target: None }],
            vec![],
            true,
        );
        let op = r.op("tools/list").unwrap();
        for _ in 0..3 {
            r.start(op).finish(Completion { outcome: Some(Outcome::Ok), ..Default::default() });
        }
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        spawn(r.clone(), sink.local_addr().unwrap(), Duration::from_millis(50)).unwrap();
        let mut buf = [0u8; 2048];
        let n = sink.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("svc.tool.requests.tools_list.ok:3|c"), "{text}");
    }
}
