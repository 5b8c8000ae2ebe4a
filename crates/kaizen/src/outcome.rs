//! How a request ended: a closed set, so it can be a metric label.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    /// Answered as asked.
    Ok = 0,
    /// A tool result with `isError: true` (the caller's mistake or an unreadable input).
    ToolError = 1,
    /// Arguments or a method that the server does not accept.
    InvalidParams = 2,
    /// The work ran past its time budget.
    Timeout = 3,
    /// A failure on the server's side (including a panic).
    Internal = 4,
    /// Refused before any work (overload, auth, limits).
    Rejected = 5,
    /// The client withdrew the request (a cancel notification, or it went away) before the
    /// answer: neither the server's success nor its failure, so it stays out of availability.
    Cancelled = 6,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::ToolError,
        Outcome::InvalidParams,
        Outcome::Timeout,
        Outcome::Internal,
        Outcome::Rejected,
        Outcome::Cancelled,
    ];
    pub const COUNT: usize = 7;

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ToolError => "tool_error",
            Outcome::InvalidParams => "invalid_params",
            Outcome::Timeout => "timeout",
            Outcome::Internal => "internal",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether the outcome spends availability error budget (the server's fault).
    pub fn is_server_error(self) -> bool {
        matches!(self, Outcome::Timeout | Outcome::Internal)
    }

    /// Whether the outcome says anything about the server at all: a request the client
    /// cancelled has neither a real latency nor a success or failure, so SLIs leave it out.
    pub fn is_judged(self) -> bool {
        self != Outcome::Cancelled
    }
}
