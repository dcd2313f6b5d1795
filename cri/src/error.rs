//! Errors of the CRI client. Each carries the endpoint or call it concerns; whether a
//! caller retries is decided from the variant and the gRPC code, never from message text.

/// A CRI client error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported container runtime endpoint {endpoint:?}: expected unix:///path/to/socket")]
    UnsupportedEndpoint { endpoint: String },

    /// A call failed; `code` is the gRPC status code, `message` the runtime's (or the
    /// transport's) explanation.
    #[error("CRI {method} on {endpoint}: {code:?}: {message}")]
    Call {
        method: &'static str,
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
}

impl Error {
    /// True when the runtime could not be reached at all (socket missing, runtime
    /// restarting): the call may succeed later without any change on our side.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Call { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            Error::UnsupportedEndpoint { .. } => false,
        }
    }

    /// True when the runtime answered that the object does not exist (already removed).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Call {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }

    /// The runtime's own explanation, without the call and endpoint: what a pod's status
    /// or event shows.
    pub fn runtime_message(&self) -> String {
        match self {
            Error::Call { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}
