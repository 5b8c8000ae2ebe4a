//! Generated from the SLO config: Grafana dashboards (operations and SLO) and an example
//! Alertmanager configuration routing Gemba's pages and tickets.

use serde_json::{Value, json};

fn panel(id: u32, title: &str, x: u32, y: u32, targets: &[(&str, &str)], unit: &str) -> Value {
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": 12, "h": 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": targets.iter().enumerate().map(|(i, (expr, legend))| json!({
            "refId": ((b'A' + i as u8) as char).to_string(),
            "expr": expr,
            "legendFormat": legend,
        })).collect::<Vec<_>>(),
    })
}

fn dashboard(uid: &str, title: &str, panels: Vec<Value>, var: (&str, &str)) -> Value {
    json!({
        "uid": uid,
        "title": title,
        "tags": ["gemba"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {
                "name": var.0, "type": "query", "multi": true, "includeAll": true,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": var.1, "refresh": 2,
            }
        ]},
        "panels": panels,
    })
}

/// The operations and SLO dashboards.
pub fn grafana() -> Vec<Value> {
    let q = |p: &str| {
        format!(
            "histogram_quantile({p}, sum by (tool, le) (rate(gemba_tool_duration_seconds_bucket{{tool=~\"$tool\"}}[5m])))"
        )
    };
    let (p50, p95, p99) = (q("0.5"), q("0.95"), q("0.99"));
    let ops = vec![
        panel(
            1,
            "Requests per second by tool",
            0,
            0,
            &[("sum by (tool) (rate(gemba_tool_requests_total{tool=~\"$tool\"}[5m]))", "{{tool}}")],
            "reqps",
        ),
        panel(
            2,
            "Latency p50 / p95 / p99 against the SLO threshold",
            12,
            0,
            &[
                (&p50, "p50 {{tool}}"),
                (&p95, "p95 {{tool}}"),
                (&p99, "p99 {{tool}}"),
                ("max by (tool) (gemba_slo_latency_threshold_seconds{tool=~\"$tool\"})", "SLO {{tool}}"),
            ],
            "s",
        ),
        panel(
            3,
            "Errors by outcome",
            0,
            8,
            &[(
                "sum by (tool, outcome) (rate(gemba_tool_requests_total{tool=~\"$tool\",outcome!=\"ok\"}[5m]))",
                "{{tool}} {{outcome}}",
            )],
            "reqps",
        ),
        panel(
            4,
            "Cache hit ratio and bytes",
            12,
            8,
            &[
                (
                    "sum(rate(gemba_cache_hits_total[5m])) / (sum(rate(gemba_cache_hits_total[5m])) + sum(rate(gemba_cache_misses_total[5m])))",
                    "hit ratio",
                ),
                ("sum(gemba_cache_bytes) / sum(gemba_cache_capacity_bytes)", "bytes / capacity"),
            ],
            "percentunit",
        ),
        panel(5, "In flight", 0, 16, &[("sum by (tool) (gemba_tool_in_flight{tool=~\"$tool\"})", "{{tool}}")], "short"),
        panel(
            6,
            "Where the time goes (value stream)",
            12,
            16,
            &[("sum by (stage) (rate(gemba_tool_stage_seconds_total{tool=~\"$tool\"}[5m]))", "{{stage}}")],
            "s",
        ),
    ];
    let slo = vec![
        panel(
            1,
            "Error budget remaining",
            0,
            0,
            &[("slo:error_budget_remaining:ratio{slo=~\"$slo\"}", "{{slo}}")],
            "percentunit",
        ),
        panel(
            2,
            "Burn rate (1h, 6h, 1d)",
            12,
            0,
            &[
                (
                    "slo:sli_error:ratio_rate1h{slo=~\"$slo\"} / on (slo) group_left slo:error_budget:ratio",
                    "1h {{slo}}",
                ),
                (
                    "slo:sli_error:ratio_rate6h{slo=~\"$slo\"} / on (slo) group_left slo:error_budget:ratio",
                    "6h {{slo}}",
                ),
                (
                    "slo:sli_error:ratio_rate1d{slo=~\"$slo\"} / on (slo) group_left slo:error_budget:ratio",
                    "1d {{slo}}",
                ),
            ],
            "short",
        ),
        panel(
            3,
            "Time to budget exhaustion at the 1h burn",
            0,
            8,
            &[("min by (slo) (gemba_slo_time_to_exhaustion_seconds{slo=~\"$slo\"})", "{{slo}}")],
            "s",
        ),
        panel(
            4,
            "SLI over the period",
            12,
            8,
            &[("1 - slo:sli_error:ratio_rate30d{slo=~\"$slo\"}", "{{slo}}")],
            "percentunit",
        ),
    ];
    vec![
        dashboard(
            "gemba-operations",
            "Gemba — operations",
            ops,
            ("tool", "label_values(gemba_tool_requests_total, tool)"),
        ),
        dashboard("gemba-slo", "Gemba — SLOs", slo, ("slo", "label_values(slo:objective:ratio, slo)")),
    ]
}

/// An example Alertmanager configuration: pages to a pager, tickets to a queue, info dropped,
/// and a page silencing the ticket of the same objective.
pub const ALERTMANAGER_EXAMPLE: &str = r#"# Example Alertmanager routing for Gemba (generated by `gemba slo alertmanager`).
# Replace the receiver URLs with your pager and ticket systems.
route:
  receiver: gemba-tickets
  group_by: [alertname, slo]
  group_wait: 30s
  group_interval: 5m
  repeat_interval: 4h
  routes:
    - matchers: [service="gemba", severity="page"]
      receiver: gemba-pager
      repeat_interval: 1h
    - matchers: [service="gemba", severity="ticket"]
      receiver: gemba-tickets
    - matchers: [service="gemba", severity="info"]
      receiver: gemba-null
receivers:
  - name: gemba-pager
    webhook_configs:
      - url: http://127.0.0.1:9095/page
  - name: gemba-tickets
    webhook_configs:
      - url: http://127.0.0.1:9095/ticket
  - name: gemba-null
inhibit_rules:
  - source_matchers: [severity="page"]
    target_matchers: [severity="ticket"]
    equal: [slo]
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn dashboards_have_panels_with_queries() {
        let d = super::grafana();
        assert_eq!(d.len(), 2);
        for dash in &d {
            let panels = dash["panels"].as_array().unwrap();
            assert!(panels.len() >= 4);
            for p in panels {
                assert!(p["targets"].as_array().unwrap().iter().all(|t| !t["expr"].as_str().unwrap().is_empty()));
            }
        }
    }
}
