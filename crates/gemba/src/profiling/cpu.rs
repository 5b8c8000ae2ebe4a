//! CPU profiles: pprof-rs samples every thread's stack with `SIGPROF` at the asked frequency
//! for the asked seconds, then resolves the symbols. Nothing runs while no profile does (the
//! timer and the signal handler exist only inside the window).

use std::io::Write;
use std::time::Duration;

use pprof::protos::Message;

use super::ProfileError;

/// Frames from these libraries are left out of the stacks (the signal and unwinding machinery).
const BLOCKLIST: &[&str] = &["libc", "libgcc", "pthread", "vdso"];

/// Sample the whole process for `seconds` at `hz`; blocks the calling thread for the window.
pub fn record(seconds: u64, hz: u32) -> Result<pprof::Report, ProfileError> {
    let hz = i32::try_from(hz).map_err(|_| ProfileError::Profiler(format!("frequency {hz} Hz is out of range")))?;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(hz)
        .blocklist(BLOCKLIST)
        .build()
        .map_err(|e| ProfileError::Profiler(e.to_string()))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let report = guard.report().build().map_err(|e| ProfileError::Profiler(e.to_string()))?;
    drop(guard);
    Ok(report)
}

/// The pprof protobuf, gzip-compressed as Go's `net/http/pprof` serves it.
pub fn pprof_gzip(report: &pprof::Report) -> Result<Vec<u8>, ProfileError> {
    let profile = report.pprof().map_err(|e| ProfileError::Profiler(e.to_string()))?;
    gzip(&profile.encode_to_vec())
}

/// An interactive SVG flame graph (inferno).
pub fn flamegraph_svg(report: &pprof::Report) -> Result<Vec<u8>, ProfileError> {
    let mut svg = Vec::new();
    report.flamegraph(&mut svg).map_err(|e| ProfileError::Profiler(e.to_string()))?;
    if svg.is_empty() {
        // inferno writes nothing for no samples: an empty file is no image, say why instead.
        return Ok(NO_SAMPLES_SVG.as_bytes().to_vec());
    }
    Ok(svg)
}

/// The flame graph of a profile with no samples: the server used no CPU while it ran.
pub const NO_SAMPLES_SVG: &str = r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="900" height="60" xmlns="http://www.w3.org/2000/svg"><text x="10" y="35" font-family="Verdana" font-size="14">No samples: the server used no CPU while it was profiled. Profile it while it works (under gemba loadtest, say).</text></svg>
"#;

/// Gzip `bytes` (the Content-Encoding-free body `go tool pprof` expects).
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>, ProfileError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).map_err(|e| ProfileError::Profiler(format!("gzip: {e}")))?;
    enc.finish().map_err(|e| ProfileError::Profiler(format!("gzip: {e}")))
}
