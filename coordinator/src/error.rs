//! The crate's one error enum, the API refusal it carries, and the stored form of an answer.
//!
//! A [`Refusal`] is a 4xx the client caused (it becomes an `ErrorBody`); every other
//! [`Error`] variant is the Coordinator's own fault and becomes a 500 whose body says nothing
//! about internals. Nothing here may ever format an API key.

use aitbc_protocol::api::{ApiError, ErrorBody, ErrorCode};
use serde::Serialize;
use serde_json::Value;

/// Everything that can go wrong in the Coordinator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is refused; the client gets this code and message.
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database {path}: schema version {found} is newer than this build supports ({supported}); upgrade aitbc-coordinator")]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("a blocking store task failed: {0}")]
    Task(String),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(r)
    }
}

/// A refusal of a request, as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub details: Value,
    /// Seconds for the `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl Refusal {
    pub fn new(code: ErrorCode, message: String) -> Refusal {
        Refusal {
            code,
            message,
            details: Value::Object(Default::default()),
            retry_after: None,
        }
    }

    /// 422 VALIDATION_FAILED naming `field` and the offending value.
    pub fn invalid(field: &str, value: &str, why: &str) -> Refusal {
        let mut shown: String = value.chars().take(64).collect();
        if shown.len() < value.len() {
            shown.push_str("...");
        }
        let mut r = Refusal::new(
            ErrorCode::ValidationFailed,
            format!("{field} = {shown:?}: {why}"),
        );
        r.details = serde_json::json!({ "field": field });
        r
    }

    /// 403 MINER_ID_TAKEN: the miner_id belongs to another key.
    pub fn miner_id_taken(miner_id: &str) -> Refusal {
        Refusal::new(
            ErrorCode::MinerIdTaken,
            format!("miner_id {miner_id:?} is registered to another key; choose another MINER_ID"),
        )
    }

    pub fn bad_request(message: String) -> Refusal {
        Refusal::new(ErrorCode::BadRequest, message)
    }

    /// The HTTP status of this refusal's code.
    pub fn status(&self) -> u16 {
        status_of(self.code)
    }

    /// The stored form: status and JSON error body.
    pub fn answer(&self) -> Answer {
        let body = ErrorBody {
            error: ApiError {
                code: self.code,
                message: self.message.clone(),
                details: self.details.clone(),
            },
        };
        Answer {
            status: self.status(),
            // Serialising a struct of strings and a Value cannot fail.
            body: serde_json::to_vec(&body).expect("ErrorBody serialises"),
            retry_after: self.retry_after,
        }
    }
}

/// HTTP status for each error code (the table in `ErrorCode`'s docs).
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest => 400,
        ErrorCode::Unauthorized => 401,
        ErrorCode::Forbidden | ErrorCode::MinerIdTaken | ErrorCode::MinerSuspended => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::JobFinished
        | ErrorCode::NotAssigned
        | ErrorCode::StaleAttempt
        | ErrorCode::UnknownMiner
        | ErrorCode::WalletFull
        | ErrorCode::NoAudit
        | ErrorCode::ResultNotReady
        | ErrorCode::OffsetMismatch => 409,
        ErrorCode::PayloadTooLarge => 413,
        ErrorCode::ValidationFailed | ErrorCode::IdempotencyKeyReused => 422,
        ErrorCode::RateLimited => 429,
        ErrorCode::Internal | ErrorCode::Other => 500,
        ErrorCode::Unavailable => 503,
    }
}

/// A finished answer: what an idempotent POST stores and replays byte-for-byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// JSON bytes; empty for 204.
    pub body: Vec<u8>,
    pub retry_after: Option<u64>,
}

impl Answer {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Result<Answer, Error> {
        Ok(Answer {
            status,
            body: serde_json::to_vec(value)?,
            retry_after: None,
        })
    }

    /// `Ok` value with `status`, or the refusal's error answer.
    pub fn of<T: Serialize>(status: u16, outcome: Result<T, Refusal>) -> Result<Answer, Error> {
        match outcome {
            Ok(v) => Answer::json(status, &v),
            Err(r) => Ok(r.answer()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_field_and_truncates_value() {
        let r = Refusal::invalid("wallet", &"x".repeat(500), "too long");
        assert_eq!(r.status(), 422);
        assert!(r.message.starts_with("wallet = \"xxx"));
        assert!(r.message.len() < 120);
        let a = r.answer();
        let body: ErrorBody = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body.error.code, ErrorCode::ValidationFailed);
        assert_eq!(body.error.details["field"], "wallet");
    }
}
