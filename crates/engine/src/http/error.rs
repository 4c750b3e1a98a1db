//! Why an HTTP request failed, in one type: every failure of either HTTP engine is an
//! [`HttpError`], and this module alone maps it to the status and body the client gets, to the
//! side that caused it ([`Source`]), and to the termination reason of a connection it ends.

use crate::conn::Termination;
use http::StatusCode;
use std::io;

/// Which side caused a failure (as pingora classifies errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's request or the route configuration refuses it.
    Client,
    /// The backend could not be reached, answered badly or too late.
    Backend,
    /// The proxy itself (a target function, an impossible state).
    Internal,
}

/// A failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// No route matches the request (and no `defaults.target`).
    NoRoute,
    /// The route refuses this client: IP rules, a disabled WebSocket, an origin not allowed.
    Forbidden,
    /// The request is malformed (head, framing, target).
    BadRequest,
    /// The request head is larger than the proxy accepts.
    HeadTooLarge,
    /// The backend refused the connection or could not be connected to.
    BackendUnreachable,
    /// Connecting to the backend took longer than `connectionTimeout`.
    ConnectTimeout,
    /// The backend's response head took longer than the route's `advanced.timeout`.
    BackendTimeout,
    /// The backend closed or broke the exchange, or sent something that is not HTTP.
    BackendBroken,
    /// A target host/port function threw, timed out or returned the wrong type.
    TargetFunction,
}

impl HttpError {
    pub fn status(self) -> StatusCode {
        match self {
            HttpError::NoRoute => StatusCode::NOT_FOUND,
            HttpError::Forbidden => StatusCode::FORBIDDEN,
            HttpError::BadRequest => StatusCode::BAD_REQUEST,
            HttpError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HttpError::ConnectTimeout | HttpError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            HttpError::BackendUnreachable | HttpError::BackendBroken | HttpError::TargetFunction => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// The plain-text body of the error response.
    pub fn body(self) -> &'static str {
        match self {
            HttpError::NoRoute => "Not Found: no route matches this request\n",
            HttpError::Forbidden => "Forbidden\n",
            HttpError::BadRequest => "Bad Request\n",
            HttpError::HeadTooLarge => "Request Header Fields Too Large\n",
            HttpError::ConnectTimeout | HttpError::BackendTimeout => {
                "Gateway Timeout: the backend did not answer in time\n"
            }
            HttpError::BackendUnreachable | HttpError::BackendBroken | HttpError::TargetFunction => {
                "Bad Gateway: the backend could not be reached\n"
            }
        }
    }

    pub fn source(self) -> Source {
        match self {
            HttpError::NoRoute | HttpError::Forbidden | HttpError::BadRequest | HttpError::HeadTooLarge => {
                Source::Client
            }
            HttpError::BackendUnreachable
            | HttpError::ConnectTimeout
            | HttpError::BackendTimeout
            | HttpError::BackendBroken => Source::Backend,
            HttpError::TargetFunction => Source::Internal,
        }
    }

    /// The termination reason of a connection this failure ends.
    pub fn termination(self) -> Termination {
        match self {
            HttpError::NoRoute => Termination::NoRoute,
            HttpError::Forbidden => Termination::IpBlocked,
            HttpError::BadRequest | HttpError::HeadTooLarge => Termination::ClientError,
            HttpError::BackendUnreachable => Termination::ConnectFailed,
            HttpError::ConnectTimeout => Termination::ConnectTimeout,
            HttpError::BackendTimeout | HttpError::BackendBroken => Termination::BackendError,
            HttpError::TargetFunction => Termination::TargetFunctionError,
        }
    }

    /// A failed backend connect: a timeout or an unreachable backend.
    pub fn from_connect(e: &io::Error) -> Self {
        if e.kind() == io::ErrorKind::TimedOut {
            HttpError::ConnectTimeout
        } else {
            HttpError::BackendUnreachable
        }
    }

    /// A failure of hyper's backend client, classified by its type, never by its text: a timeout
    /// anywhere in the chain is a timeout, a failed connect is an unreachable backend, anything
    /// else broke the exchange.
    pub fn from_client(e: &hyper_util::client::legacy::Error) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if err.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
                return if e.is_connect() { HttpError::ConnectTimeout } else { HttpError::BackendTimeout };
            }
            cur = err.source();
        }
        if e.is_connect() {
            HttpError::BackendUnreachable
        } else {
            HttpError::BackendBroken
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_sources_and_terminations() {
        let all = [
            HttpError::NoRoute,
            HttpError::Forbidden,
            HttpError::BadRequest,
            HttpError::HeadTooLarge,
            HttpError::BackendUnreachable,
            HttpError::ConnectTimeout,
            HttpError::BackendTimeout,
            HttpError::BackendBroken,
            HttpError::TargetFunction,
        ];
        for e in all {
            let s = e.status().as_u16();
            assert!((400..600).contains(&s), "{e:?}");
            assert_eq!(s < 500, e.source() == Source::Client, "{e:?}: 4xx exactly for client failures");
            assert!(e.body().ends_with('\n'));
        }
        assert_eq!(HttpError::BackendTimeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(HttpError::BackendTimeout.termination().is_outgoing());
        assert_eq!(HttpError::ConnectTimeout.termination(), Termination::ConnectTimeout);
        assert_eq!(HttpError::from_connect(&io::Error::from(io::ErrorKind::TimedOut)), HttpError::ConnectTimeout);
        assert_eq!(
            HttpError::from_connect(&io::Error::from(io::ErrorKind::ConnectionRefused)),
            HttpError::BackendUnreachable
        );
    }
}
