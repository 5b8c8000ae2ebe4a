//! Profiles on demand on the admin listener (behind its token like every admin route):
//! `/debug/pprof/profile?seconds=N&hz=H` (CPU, gzip-compressed pprof protobuf as Go serves it,
//! for `go tool pprof` and Pyroscope), `/debug/pprof/flamegraph?seconds=N&hz=H` (SVG), and
//! `/debug/pprof/heap?seconds=N[&format=text]` (bytes allocated during the window and still in
//! use at its end, by call site). One CPU profile and one heap window at a time; a second gets
//! 409 with the time to wait. `gemba profile` is the client ([`cli`]).

pub mod cli;
pub mod cpu;
pub mod heap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Longest window, in seconds.
pub const MAX_SECONDS: u64 = 60;
/// Window when `seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 10;
/// CPU sampling frequency when `hz` is not given.
pub const DEFAULT_HZ: u32 = 100;
/// Allowed CPU sampling frequencies.
pub const HZ_RANGE: std::ops::RangeInclusive<u32> = 1..=1000;

/// Why a profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a {kind} profile is already running (one at a time); retry in about {wait} s, when it ends")]
    Busy { kind: &'static str, wait: u64 },
    #[error("the profiler failed: {0}")]
    Profiler(String),
}

impl IntoResponse for ProfileError {
    fn into_response(self) -> Response {
        let status = match &self {
            ProfileError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProfileError::Busy { .. } => StatusCode::CONFLICT,
            ProfileError::Profiler(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = (status, format!("{self}\n")).into_response();
        if let ProfileError::Busy { wait, .. } = self
            && let Ok(v) = HeaderValue::from_str(&wait.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// The parameters of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub seconds: u64,
    pub hz: u32,
    /// `format=text` (the heap view's readable table).
    pub text: bool,
}

/// Parse `seconds`, `hz` and `format` from a query string, saying what was wrong.
pub fn parse_query(query: Option<&str>) -> Result<Params, ProfileError> {
    let mut p = Params { seconds: DEFAULT_SECONDS, hz: DEFAULT_HZ, text: false };
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "seconds" => {
                p.seconds = v.parse().ok().filter(|s| (1..=MAX_SECONDS).contains(s)).ok_or_else(|| {
                    ProfileError::BadRequest(format!(
                        "seconds must be a whole number from 1 to {MAX_SECONDS} (got '{v}'); e.g. ?seconds=10"
                    ))
                })?
            }
            "hz" => p.hz = v.parse().ok().filter(|h| HZ_RANGE.contains(h)).ok_or_else(|| {
                ProfileError::BadRequest(format!(
                    "hz must be a whole number from {} to {} (got '{v}'); the default {DEFAULT_HZ} costs a few percent",
                    HZ_RANGE.start(),
                    HZ_RANGE.end()
                ))
            })?,
            "format" => match v {
                "text" => p.text = true,
                "pprof" | "proto" => p.text = false,
                _ => {
                    return Err(ProfileError::BadRequest(format!(
                        "format must be pprof (the default) or text (got '{v}')"
                    )));
                }
            },
            // Go's pprof handlers accept these; ignored here rather than refused.
            "debug" | "gc" => {}
            other => {
                return Err(ProfileError::BadRequest(format!(
                    "unknown parameter '{other}': use seconds=1..{MAX_SECONDS}, hz=1..1000 (CPU) or format=text (heap)"
                )));
            }
        }
    }
    Ok(p)
}

/// One running profile of a kind: taken with [`Slot::take`], released when dropped.
struct Slot {
    busy: &'static AtomicBool,
}

/// Unix seconds when the running window of each kind ends (for the 409's wait).
static CPU_BUSY: AtomicBool = AtomicBool::new(false);
static CPU_ENDS: AtomicU64 = AtomicU64::new(0);
static HEAP_BUSY: AtomicBool = AtomicBool::new(false);
static HEAP_ENDS: AtomicU64 = AtomicU64::new(0);

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Slot {
    fn take(
        busy: &'static AtomicBool,
        ends: &AtomicU64,
        kind: &'static str,
        seconds: u64,
    ) -> Result<Slot, ProfileError> {
        if busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            let wait = ends.load(Ordering::Relaxed).saturating_sub(now_s()).max(1);
            return Err(ProfileError::Busy { kind, wait });
        }
        ends.store(now_s() + seconds, Ordering::Relaxed);
        Ok(Slot { busy })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// What a CPU request answers with.
#[derive(Clone, Copy)]
enum CpuOutput {
    Pprof,
    Svg,
}

async fn cpu(uri: Uri, output: CpuOutput) -> Result<Response, ProfileError> {
    let p = parse_query(uri.query())?;
    let slot = Slot::take(&CPU_BUSY, &CPU_ENDS, "CPU", p.seconds)?;
    // The window runs on a blocking thread to its end even if the client goes away; the slot
    // is released there.
    let body = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let report = cpu::record(p.seconds, p.hz)?;
        match output {
            CpuOutput::Pprof => cpu::pprof_gzip(&report),
            CpuOutput::Svg => cpu::flamegraph_svg(&report),
        }
    })
    .await
    .map_err(|e| ProfileError::Profiler(e.to_string()))??;
    Ok(match output {
        CpuOutput::Pprof => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"profile.pb.gz\""),
            ],
            body,
        )
            .into_response(),
        CpuOutput::Svg => ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response(),
    })
}

async fn profile(uri: Uri) -> Result<Response, ProfileError> {
    cpu(uri, CpuOutput::Pprof).await
}

async fn flamegraph(uri: Uri) -> Result<Response, ProfileError> {
    cpu(uri, CpuOutput::Svg).await
}

async fn heap_view(uri: Uri) -> Result<Response, ProfileError> {
    let p = parse_query(uri.query())?;
    let slot = Slot::take(&HEAP_BUSY, &HEAP_ENDS, "heap", p.seconds)?;
    let profile = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        heap::start();
        std::thread::sleep(std::time::Duration::from_secs(p.seconds));
        heap::stop(p.seconds)
    })
    .await
    .map_err(|e| ProfileError::Profiler(e.to_string()))?;
    if p.text {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], profile.to_text(40)).into_response());
    }
    use pprof::protos::Message;
    let body = cpu::gzip(&profile.to_pprof().encode_to_vec())?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"heap.pb.gz\""),
        ],
        body,
    )
        .into_response())
}

/// The profile routes, to merge into the admin router before its token guard.
pub fn router() -> Router {
    Router::new()
        .route("/debug/pprof/profile", get(profile))
        .route("/debug/pprof/flamegraph", get(flamegraph))
        .route("/debug/pprof/heap", get(heap_view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bounds_are_clear() {
        assert_eq!(parse_query(None).unwrap(), Params { seconds: 10, hz: 100, text: false });
        assert_eq!(parse_query(Some("seconds=60&hz=250")).unwrap(), Params { seconds: 60, hz: 250, text: false });
        assert!(parse_query(Some("format=text")).unwrap().text);
        for bad in ["seconds=0", "seconds=61", "seconds=x", "hz=0", "hz=5000", "format=svg", "sec=3"] {
            let e = parse_query(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("must be") || e.contains("unknown parameter"), "{bad}: {e}");
        }
    }

    #[test]
    fn one_window_of_a_kind_at_a_time() {
        static BUSY: AtomicBool = AtomicBool::new(false);
        static ENDS: AtomicU64 = AtomicU64::new(0);
        let first = Slot::take(&BUSY, &ENDS, "CPU", 30).unwrap();
        let Err(ProfileError::Busy { wait, .. }) = Slot::take(&BUSY, &ENDS, "CPU", 30) else {
            panic!("a second window was allowed")
        };
        assert!((1..=30).contains(&wait));
        drop(first);
        assert!(Slot::take(&BUSY, &ENDS, "CPU", 30).is_ok());
    }
}
