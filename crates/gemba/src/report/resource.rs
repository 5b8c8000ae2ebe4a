//! The `kaizen://report/{period}` MCP resource: the JSON report over the last day, week or month
//! of this server's request log, built on demand off the async runtime.

use std::sync::Arc;
use std::time::Duration;

use kaizen::learn::Period;
use rmcp::ErrorData;
use rmcp::model::{CompletionInfo, ResourceTemplate};

use crate::wiring::Kaizen;

/// The URI template, as listed in `resources/templates/list`.
pub const TEMPLATE: &str = "kaizen://report/{period}";
const PREFIX: &str = "kaizen://report/";

/// One report is built at a time: a burst of reads waits rather than multiplying the memory
/// and CPU one build takes (tens of MB and seconds over millions of rows).
static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The template entry for `resources/templates/list`.
pub fn template() -> ResourceTemplate {
    ResourceTemplate::new(TEMPLATE, "kaizen-report")
        .with_title("Kaizen report")
        .with_description(
            "What the request log teaches over the last day, week or month (period = day|week|month): \
             SLO compliance, top error signatures, workflows, cache what-if and recommendation, \
             trends, and a ranked improvement backlog. JSON.",
        )
        .with_mime_type("application/json")
}

/// `completion/complete` for the template's `period`: the periods starting with `query`.
pub fn complete_period(query: &str) -> CompletionInfo {
    let q = query.trim().to_lowercase();
    let values: Vec<String> = [Period::Day, Period::Week, Period::Month]
        .iter()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with(&q))
        .map(String::from)
        .collect();
    let total = values.len() as u32;
    CompletionInfo::with_pagination(values, Some(total), false).unwrap_or_default()
}

/// Whether `uri` names a report (any period; the reader checks it).
pub fn matches(uri: &str) -> bool {
    uri.starts_with(PREFIX)
}

/// The report `uri` names, as JSON.
pub async fn read(uri: &str, kaizen: Option<Arc<Kaizen>>) -> Result<String, ErrorData> {
    let name = uri.strip_prefix(PREFIX).unwrap_or(uri);
    let period: Period = name.parse().map_err(|_| {
        ErrorData::resource_not_found(
            format!("no report '{uri}': use kaizen://report/day, kaizen://report/week or kaizen://report/month"),
            None,
        )
    })?;
    let Some(k) = kaizen else {
        return Err(ErrorData::resource_not_found("reports are off: measurement is disabled (--no-kaizen)", None));
    };
    let Some(store) = k.store.clone() else {
        return Err(ErrorData::resource_not_found(
            "reports are off: the request log could not be opened at start (see the server's log)",
            None,
        ));
    };
    let _turn =
        BUILDING.acquire().await.map_err(|_| ErrorData::internal_error("the report builder has shut down", None))?;
    tokio::task::spawn_blocking(move || {
        // The requests just answered are still on their way to the log: let them land.
        k.recorder.flush();
        store.flush(Duration::from_secs(1));
        let until_ms = super::now_ms();
        let opts = super::options::build(
            period,
            until_ms,
            k.cache_bytes as u64,
            &k.slo.slo,
            &super::options::ReportConfig::default(),
        );
        kaizen::learn::build(&store.path, &opts).map(|r| r.to_json())
    })
    .await
    .map_err(|e| ErrorData::internal_error(format!("building the report failed: {e}"), None))?
    .map_err(|e| ErrorData::internal_error(format!("cannot build the report: {e}"), None))
}
