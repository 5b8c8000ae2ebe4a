//! What the heavy steps of a call did (a recalculation, each LibreOffice run, a save), told to
//! the embedder after the fact: kind, start and end instants, backend, process exit status,
//! outcome. The domain knows nothing of tracing; the embedder turns these into child spans of
//! the call (or ignores them). Collected in the call's [`Budget`](crate::Budget) stage times,
//! bounded.

use std::time::Instant;

use crate::error::SheetsError;

/// Most phases kept per call (a save that recalculates through LibreOffice with retries has a
/// handful; the rest are dropped).
pub const MAX_PHASES: usize = 32;

/// Which step a [`Phase`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// A fork's recalculation (in process or through LibreOffice, with any fallback).
    Recalc,
    /// One LibreOffice process run (inside a recalculation; one per attempt).
    LibreOffice,
    /// Building a fork's file and writing it to disk.
    Save,
}

impl PhaseKind {
    /// A short name (`recalc`, `libreoffice`, `save`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recalc => "recalc",
            Self::LibreOffice => "libreoffice",
            Self::Save => "save",
        }
    }
}

/// One step of a call that took real work: a fixed-size plain record (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    pub kind: PhaseKind,
    pub start: Instant,
    pub end: Instant,
    /// The recalculation backend that produced the values (`in_process`, `libreoffice`).
    pub backend: Option<&'static str>,
    /// A process's exit code (LibreOffice), when it exited by itself with one.
    pub exit_code: Option<i32>,
    /// Why the step failed (`timeout`, `cancelled`, `exit_status`, `unsupported`...); None: it
    /// succeeded.
    pub error: Option<&'static str>,
    /// Formula cells computed (recalculation), when known.
    pub cells: Option<u64>,
    /// Bytes written (save), when known.
    pub bytes: Option<u64>,
}

impl Phase {
    /// A phase of `kind` from `start` to now, with nothing else known yet.
    pub fn ended(kind: PhaseKind, start: Instant) -> Self {
        Phase {
            kind,
            start,
            end: Instant::now(),
            backend: None,
            exit_code: None,
            error: None,
            cells: None,
            bytes: None,
        }
    }
}

/// A short, fixed name for an error (a phase's `error`, a trace's `error.type`).
pub fn error_kind(e: &SheetsError) -> &'static str {
    match e {
        SheetsError::UnknownWorkbook { .. } => "unknown_workbook",
        SheetsError::UnknownSheet { .. } => "unknown_sheet",
        SheetsError::UnknownRegion { .. } => "unknown_region",
        SheetsError::UnknownTable { .. } => "unknown_table",
        SheetsError::InvalidArgument { .. } => "invalid_argument",
        SheetsError::Encrypted { .. } => "encrypted",
        SheetsError::Unsupported { .. } => "unsupported",
        SheetsError::Unreadable { .. } => "unreadable",
        SheetsError::ChangedOnDisk { .. } => "changed_on_disk",
        SheetsError::LimitExceeded { .. } => "limit_exceeded",
        SheetsError::Timeout { .. } | SheetsError::RecalcTimeout { .. } => "timeout",
        SheetsError::Cancelled => "cancelled",
        SheetsError::Workspace(_) => "workspace",
        SheetsError::Internal(_) => "internal",
        SheetsError::WouldBlock => "would_block",
    }
}
