//! The crate's one error type, [`RulesError`], classified into the shared [`ErrorKind`]s.
//!
//! Everything here is raised when a rule or an operator is *created*: once compiled, evaluating
//! a message never fails (a runtime type mismatch on dynamic payload data yields SQL `NULL`).

use ferrite_core::{Classify, ErrorKind};

/// Where in the rule text something is: 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a rule, a window operator or a detector could not be created.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RulesError {
    /// The rule text is not valid SQL, or not the subset rules accept.
    #[error("syntax error at {pos}: {message}")]
    Syntax {
        /// Where the parser stopped.
        pos: Position,
        /// What it expected or found.
        message: String,
    },
    /// The rule is valid SQL but an expression is ill-typed or misused (unknown function,
    /// wrong arity, aggregate outside a window, a bad regex, ...).
    #[error("error at {pos}: {message}")]
    Semantic {
        /// Where the offending expression starts.
        pos: Position,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration value is out of range (a zero window size, a slide larger than the
    /// size, a sketch accuracy outside (0, 1), ...).
    #[error("invalid {what}: {message}")]
    InvalidConfig {
        /// Which setting.
        what: &'static str,
        /// Why it is invalid.
        message: String,
    },
}

impl RulesError {
    pub(crate) fn config(what: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            what,
            message: message.into(),
        }
    }

    /// The position in the rule text, for syntax and semantic errors.
    pub fn position(&self) -> Option<Position> {
        match self {
            Self::Syntax { pos, .. } | Self::Semantic { pos, .. } => Some(*pos),
            Self::InvalidConfig { .. } => None,
        }
    }
}

impl Classify for RulesError {
    fn kind(&self) -> ErrorKind {
        // Every variant is a property of the rule or configuration the caller supplied.
        ErrorKind::InvalidInput
    }
}
