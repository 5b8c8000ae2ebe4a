//! The real binary driven by rmcp's own client over stdio, in both lifecycles (legacy
//! `initialize` and 2026-07-28 `server/discover`).

use std::path::PathBuf;

use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_gemba");

fn workspace(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemba-rmcp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status =
        std::process::Command::new(BIN).args(["workloads", "--set", "example", "--out"]).arg(&dir).status().unwrap();
    assert!(status.success());
    dir
}

fn command(dir: &PathBuf) -> tokio::process::Command {
    tokio::process::Command::new(BIN).configure(|c| {
        c.arg("serve").arg("--stdio").arg("--workspace").arg(dir).env("GEMBA_LOG", "warn");
    })
}

async fn call(client: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> Value {
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(args.as_object().cloned().unwrap());
    let r = client.call_tool(params).await.unwrap();
    assert_ne!(r.is_error, Some(true), "{tool}: {:?}", r.content);
    r.structured_content.unwrap()
}

async fn exercise(client: &RunningService<RoleClient, ()>) {
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 33);
    assert_eq!(tools[0].name, "list_workbooks");
    let list = call(client, "list_workbooks", json!({})).await;
    let sales =
        list["workbooks"].as_array().unwrap().iter().find(|w| w["path"] == "sales.xlsx").unwrap()["workbook_id"]
            .as_str()
            .unwrap()
            .to_string();
    let t = call(
        client,
        "read_table",
        json!({"workbook_id": sales, "sheet_name": "Sales", "limit": 2, "format": "values", "columns": ["Units"]}),
    )
    .await;
    assert_eq!(t["headers"], json!(["Units"]));
    assert_eq!(t["values"].as_array().unwrap().len(), 2);
    assert_eq!(t["total_rows"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_legacy_initialize() {
    let dir = workspace("legacy");
    let client = ().serve(TokioChildProcess::new(command(&dir)).unwrap()).await.unwrap();
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "gemba");
    exercise(&client).await;
    client.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmcp_client_discover() {
    let dir = workspace("discover");
    let client = ()
        .serve_with_lifecycle(
            TokioChildProcess::new(command(&dir)).unwrap(),
            ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] },
        )
        .await
        .unwrap();
    assert_eq!(client.peer_info().unwrap().protocol_version, ProtocolVersion::V_2026_07_28);
    exercise(&client).await;
    client.cancel().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
