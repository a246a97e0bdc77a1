//! Every failure lank8s answers with: an OCI error code, an HTTP status, a
//! message for the person reading it, and whose fault it was.

use http::StatusCode;
use serde_json::json;

/// Who caused a failure: it decides the status family and what is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Internal,
}

/// The error codes of the distribution spec that lank8s uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    Denied,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    RangeInvalid,
    TagInvalid,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unsupported,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::Denied => "DENIED",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unsupported => "UNSUPPORTED",
        }
    }

    /// Reads a code an upstream registry sent back, if it is one we know.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        Some(match code {
            "BLOB_UNKNOWN" => ErrorCode::BlobUnknown,
            "DENIED" => ErrorCode::Denied,
            "DIGEST_INVALID" => ErrorCode::DigestInvalid,
            "MANIFEST_INVALID" => ErrorCode::ManifestInvalid,
            "MANIFEST_UNKNOWN" => ErrorCode::ManifestUnknown,
            "NAME_INVALID" => ErrorCode::NameInvalid,
            "NAME_UNKNOWN" => ErrorCode::NameUnknown,
            "TAG_INVALID" => ErrorCode::TagInvalid,
            "TOOMANYREQUESTS" => ErrorCode::TooManyRequests,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "UNSUPPORTED" => ErrorCode::Unsupported,
            _ => return None,
        })
    }
}

/// A wait as the whole seconds of `Retry-After`, rounded up: a client
/// retrying after them must not arrive a fraction too early.
pub fn retry_seconds(wait: std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

/// A failure on the registry API, ready to be written as OCI error JSON.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    pub fault: Fault,
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds a client should wait before retrying (429 and 503).
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge of a 401.
    pub challenge: Option<String>,
}

impl RegistryError {
    pub fn new(
        fault: Fault,
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        RegistryError {
            fault,
            status,
            code,
            message: message.into(),
            retry_after: None,
            challenge: None,
        }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The OCI error body: `{"errors":[{"code","message","detail"}]}`.
    pub fn body(&self) -> Vec<u8> {
        let body = json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        body.to_string().into_bytes()
    }

    // === access refused ===

    /// 401 with the challenge that tells the client where to log in.
    pub fn unauthorized(message: impl Into<String>, challenge: String) -> Self {
        let mut err = Self::new(
            Fault::Client,
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            message,
        );
        err.challenge = Some(challenge);
        err
    }

    /// 403: the repository is not served to anyone.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            message,
        )
    }

    /// 429: a fair-use limit; the message names it.
    pub fn too_many_requests(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let seconds = retry_seconds(retry_after);
        Self::new(
            Fault::Client,
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyRequests,
            message,
        )
        .with_retry_after(seconds)
    }

    // === client mistakes ===

    pub fn name_invalid(name: &str) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            format!("invalid repository name {name:?}"),
        )
    }

    pub fn tag_invalid(tag: &str) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::BAD_REQUEST,
            ErrorCode::TagInvalid,
            format!("invalid tag {tag:?}"),
        )
    }

    pub fn digest_invalid(digest: &str) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            format!("invalid digest {digest:?}"),
        )
    }

    pub fn unsupported_digest(digest: &str) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            format!("digest algorithm of {digest:?} is not supported (sha256 and sha512 are)"),
        )
    }

    pub fn unknown_registry(registry: &str) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            format!("registry {registry:?} is not mirrored here"),
        )
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            message,
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            Fault::Client,
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            "this mirror is read-only: push and delete are not supported",
        )
    }

    pub fn range_not_satisfiable(size: u64) -> Self {
        Self::new(
            Fault::Client,
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::RangeInvalid,
            format!("requested range is outside the blob's {size} bytes"),
        )
    }

    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(Fault::Client, StatusCode::NOT_FOUND, code, message)
    }

    // === upstream trouble ===

    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            Fault::Upstream,
            StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable,
            message,
        )
    }

    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(
            Fault::Upstream,
            StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Unavailable,
            message,
        )
    }

    // === our own trouble ===

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            Fault::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// Whether this failure lets a cached copy be served instead
    /// (stale-if-error): the upstream is down, slow, overloaded or broken,
    /// as opposed to having answered that the thing does not exist.
    pub fn allows_stale(&self) -> bool {
        self.fault == Fault::Upstream
            && (self.status.is_server_error() || self.status == StatusCode::TOO_MANY_REQUESTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_oci_error_json() {
        let err = RegistryError::name_invalid("Bad");
        let body: serde_json::Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(
            body["errors"][0]["message"],
            "invalid repository name \"Bad\""
        );
    }

    #[test]
    fn stale_only_for_upstream_trouble() {
        assert!(RegistryError::bad_gateway("x").allows_stale());
        assert!(!RegistryError::not_found(ErrorCode::ManifestUnknown, "x").allows_stale());
        assert!(!RegistryError::internal("x").allows_stale());
    }
}
