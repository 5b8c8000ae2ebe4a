//! The names Kaizen's exports carry, all handed in by the embedding program: the metric prefix,
//! the label that names an operation, alert names and the service label, the closed label sets
//! of protocol versions and transports, and optional semantic-convention histograms. Kaizen
//! itself names nothing after any product or protocol.

/// Histograms in a semantic convention (e.g. OpenTelemetry's MCP conventions), exported from the
/// same counters as the native ones.
#[derive(Debug, Clone)]
pub struct SemanticConvention {
    /// The per-operation duration histogram (e.g. `mcp_server_operation_duration_seconds`).
    pub operation_metric: String,
    pub operation_help: String,
    /// The per-session duration histogram (e.g. `mcp_server_session_duration_seconds`).
    pub session_metric: String,
    pub session_help: String,
    /// Label names for an operation's method, target, error type, transport and protocol version.
    pub method_label: String,
    pub target_label: String,
    pub error_label: String,
    pub transport_label: String,
    pub protocol_label: String,
}

#[derive(Debug, Clone)]
pub struct Naming {
    /// Prefix of every metric (`<prefix>_tool_requests_total`) and StatsD key.
    pub metric_prefix: String,
    /// The label naming an operation (e.g. `tool`).
    pub op_label: String,
    /// Prefix of alert names (`<prefix>SLOBurnRatePage`).
    pub alert_prefix: String,
    /// The `service` label on alerts and the webhook receiver name.
    pub service: String,
    /// Protocol versions as a closed label set; anything else counts as `other`.
    pub protocols: Vec<String>,
    /// Transports as a closed label set (e.g. `pipe`, `tcp`).
    pub transports: Vec<String>,
    pub semantic_convention: Option<SemanticConvention>,
}

impl Naming {
    /// A plain naming: `prefix_…` metrics, `op` labels, one protocol and one transport.
    pub fn plain(prefix: &str) -> Self {
        Self {
            metric_prefix: prefix.into(),
            op_label: "op".into(),
            alert_prefix: String::new(),
            service: prefix.into(),
            protocols: Vec::new(),
            transports: vec!["default".into()],
            semantic_convention: None,
        }
    }

    /// `<prefix>_<suffix>`.
    pub fn metric(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.metric_prefix)
    }

    /// `<AlertPrefix><suffix>`.
    pub fn alert(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.alert_prefix)
    }

    /// Protocol labels, ending with `other`.
    pub fn protocol_labels(&self) -> impl Iterator<Item = &str> {
        self.protocols.iter().map(String::as_str).chain(std::iter::once("other"))
    }

    /// Number of protocol labels (with `other`).
    pub fn protocol_count(&self) -> usize {
        self.protocols.len() + 1
    }

    /// The label index of a protocol version (`other` when unknown).
    pub fn protocol_index(&self, v: &str) -> usize {
        self.protocols.iter().position(|p| p == v).unwrap_or(self.protocols.len())
    }

    /// The index of `other`.
    pub fn other_protocol(&self) -> usize {
        self.protocols.len()
    }

    pub fn transport_count(&self) -> usize {
        self.transports.len().max(1)
    }
}
