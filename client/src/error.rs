//! The errors of this crate.

use std::path::PathBuf;

use strongbox_protocol::ErrorCode;
use strongbox_protocol::frames::control::ErrorFrame;
use strongbox_protocol::session::Violation;
use thiserror::Error;

/// Everything that can go wrong between an application and the broker.
///
/// The `Display` text is one line meant for people: the CLI prints it after
/// `error: `.
#[non_exhaustive]
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    /// The client configuration or profile is invalid.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// A profile file could not be read or parsed.
    #[error("cannot load profile {}: {message}", path.display())]
    Profile {
        /// The profile file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A certificate or key could not be read or parsed.
    #[error("cannot load {what} from {source_name}: {message}")]
    Credentials {
        /// `CA certificates`, `client certificate` or `private key`.
        what: &'static str,
        /// The file, or `inline PEM`.
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The broker could not be reached.
    #[error("cannot connect to broker {broker}: {message}")]
    Connect {
        /// The broker address as configured.
        broker: String,
        /// Why.
        message: String,
    },
    /// The TLS handshake failed for a reason other than the client
    /// certificate (the broker's certificate is not trusted, no common ALPN).
    #[error("TLS failure: {0}")]
    Tls(String),
    /// The broker refused this client's identity: its certificate was
    /// missing, not trusted, expired or revoked.
    #[error("the broker rejected this client's certificate: {0}")]
    Authentication(String),
    /// The broker refused a request with a coded error. The message is the
    /// broker's text, shown as is (for example `not authorized:
    /// spiffe://strongbox.dev/bob may not publish demo.greetings`).
    #[error("{}", broker_text(*code, message))]
    Broker {
        /// The error code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// Records of one partition could not be delivered: the broker reported
    /// the offsets `first_offset..end_offset` of `topic`/`partition` as
    /// unreadable (damaged data, or a partition whose damaged files kept it
    /// from opening). A consumer yields this as an item and goes on with
    /// its other partitions; the partition itself goes on after the range
    /// only when `skipped` is true (see
    /// [`ConsumerConfig::skip_damaged`](crate::ConsumerConfig::skip_damaged)).
    #[error("{topic}/{partition}: records {} {}: {message}",
            offset_range(*first_offset, *end_offset),
            if *skipped { "were skipped" } else { "cannot be read; the partition is stopped" })]
    PartitionDamaged {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The broker's wire code, usually 86 ([`ErrorCode::DataDamaged`]).
        code: u16,
        /// The first offset not delivered.
        first_offset: u64,
        /// The next offset that can be read again, when known.
        end_offset: Option<u64>,
        /// True when the consumer goes on from `end_offset`.
        skipped: bool,
        /// The broker's reason (which file, what to do).
        message: String,
    },
    /// The broker answered with an error code this version does not know.
    #[error("broker error {code}: {message}")]
    UnknownBrokerError {
        /// The raw code.
        code: u16,
        /// The broker's message.
        message: String,
    },
    /// The broker broke the protocol; the stream or connection was closed.
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection was lost and could not be re-established.
    #[error("connection to the broker lost: {0}")]
    ConnectionLost(String),
    /// The client, producer or consumer was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// A record cannot be sent as given.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A value sealer or opener (for example end-to-end encryption) failed on
    /// one record.
    #[error("record transform failed: {0}")]
    Transform(String),
}

/// `first..end`, or `first..` when the end is unknown.
fn offset_range(first: u64, end: Option<u64>) -> String {
    match end {
        Some(end) => format!("{first}..{end}"),
        None => format!("from {first} on"),
    }
}

fn broker_text(code: ErrorCode, message: &str) -> String {
    if message.is_empty() {
        code.name().replace('_', " ")
    } else {
        message.to_owned()
    }
}

impl ClientError {
    /// The wire error code: the broker's, when it refused the request or
    /// reported a partition; [`ErrorCode::Timeout`] for
    /// [`ClientError::Timeout`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Broker { code, .. } => Some(*code),
            Self::PartitionDamaged { code, .. } => ErrorCode::from_u16(*code),
            Self::Timeout(_) => Some(ErrorCode::Timeout),
            _ => None,
        }
    }

    /// True when the same operation may succeed later without any change:
    /// the connection dropped, the broker was briefly unavailable. Broker
    /// codes are classified by [`ErrorCode::is_retriable`], the one place
    /// that decides it. Producers and consumers retry these within their
    /// time budget; everything else fails at once.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout(_) | Self::ConnectionLost(_) => true,
            Self::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// The error for an `Error` frame from the broker.
    pub fn from_error_frame(frame: &ErrorFrame) -> Self {
        Self::from_code(frame.code, frame.message.clone())
    }

    /// The error for a raw wire code and message.
    pub(crate) fn from_code(code: u16, message: String) -> Self {
        match ErrorCode::from_u16(code) {
            Some(ErrorCode::AuthenticationFailed) => Self::Authentication(message),
            Some(code) => Self::Broker { code, message },
            None => Self::UnknownBrokerError { code, message },
        }
    }

    /// The error for a violation of the protocol by the broker, or for an
    /// `Error` frame that ended a stream (which the session machines report
    /// as a violation carrying the broker's code).
    pub(crate) fn from_violation(v: Violation) -> Self {
        match v.code {
            ErrorCode::ProtocolViolation
            | ErrorCode::MalformedFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::UnknownFrameType
            | ErrorCode::UnexpectedFrame
            | ErrorCode::CreditExceeded => Self::Protocol(v.to_string()),
            ErrorCode::Timeout => Self::Timeout(v.message),
            code => Self::from_code(code.as_u16(), v.message),
        }
    }

    /// The error for a QUIC connection that ended.
    pub(crate) fn from_connection(e: &quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as C;
        match e {
            C::ConnectionClosed(close) => {
                let code = u64::from(close.error_code);
                if (0x100..0x200).contains(&code) {
                    let alert = (code & 0xff) as u8;
                    tls_alert_error(alert, &String::from_utf8_lossy(&close.reason))
                } else {
                    Self::ConnectionLost(format!("the broker's QUIC stack closed it: {close}"))
                }
            }
            C::ApplicationClosed(close) => {
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                let code = close.error_code.into_inner();
                match u16::try_from(code) {
                    Ok(0) => Self::ConnectionLost(if reason.is_empty() {
                        "the broker closed the connection".into()
                    } else {
                        format!("the broker closed the connection: {reason}")
                    }),
                    Ok(code) => Self::from_code(code, reason),
                    Err(_) => Self::UnknownBrokerError {
                        code: u16::MAX,
                        message: reason,
                    },
                }
            }
            C::TransportError(t) => {
                let code = u64::from(t.code);
                if (0x100..0x200).contains(&code) {
                    // Our own TLS stack refused the broker.
                    Self::Tls(format!("cannot verify the broker: {}", t.reason))
                } else {
                    Self::ConnectionLost(t.to_string())
                }
            }
            C::TimedOut => Self::Timeout("the broker stopped answering (QUIC idle timeout)".into()),
            C::Reset => Self::ConnectionLost(
                "the broker reset the connection (it restarted, or lost the connection)".into(),
            ),
            C::LocallyClosed => Self::ConnectionLost("the connection was closed".into()),
            other => Self::ConnectionLost(other.to_string()),
        }
    }

    /// The error for a failed read on a stream.
    pub(crate) fn from_read(e: &quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => Self::from_connection(c),
            quinn::ReadError::Reset(code) => stream_reset(code.into_inner()),
            other => Self::ConnectionLost(other.to_string()),
        }
    }

    /// The error for a failed write on a stream.
    pub(crate) fn from_write(e: &quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Self::from_connection(c),
            quinn::WriteError::Stopped(code) => stream_reset(code.into_inner()),
            other => Self::ConnectionLost(other.to_string()),
        }
    }
}

fn stream_reset(code: u64) -> ClientError {
    match u16::try_from(code).ok().and_then(ErrorCode::from_u16) {
        Some(code) => ClientError::Broker {
            code,
            message: format!("the broker reset the stream ({})", code.name()),
        },
        None => ClientError::ConnectionLost(format!("the broker reset the stream (code {code})")),
    }
}

/// Maps a TLS alert the broker sent to an error. Alerts about the
/// certificate mean the broker refused our identity.
fn tls_alert_error(alert: u8, reason: &str) -> ClientError {
    let name = match alert {
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate",
        44 => "certificate revoked",
        45 => "certificate expired",
        46 => "certificate unknown",
        48 => "unknown CA",
        49 => "access denied",
        116 => "certificate required (none was sent)",
        120 => "no application protocol",
        _ => "",
    };
    let detail = match (name.is_empty(), reason.is_empty()) {
        (true, true) => format!("TLS alert {alert}"),
        (true, false) => format!("TLS alert {alert}: {reason}"),
        (false, true) => format!("{name} (TLS alert {alert})"),
        (false, false) => format!("{name} (TLS alert {alert}): {reason}"),
    };
    match alert {
        40 if reason.contains("NoKxGroupsInCommon") => ClientError::Tls(format!(
            "the broker and this client have no TLS key exchange group in common: the broker \
             may require the hybrid post-quantum exchange (tls.key_exchange = \"require-hybrid\") \
             while this client offers only classical groups, or the other way round; check the \
             client's key_exchange setting ({detail})"
        )),
        42..=46 | 48 | 49 | 116 => ClientError::Authentication(detail),
        120 => ClientError::Tls(format!(
            "the broker does not speak {}: {detail}",
            String::from_utf8_lossy(strongbox_protocol::ALPN)
        )),
        _ => ClientError::Tls(format!("the broker ended the handshake: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_common_key_exchange_group_names_the_setting() {
        let e = tls_alert_error(40, "peer is incompatible: NoKxGroupsInCommon");
        let text = e.to_string();
        assert!(matches!(e, ClientError::Tls(_)), "{e:?}");
        assert!(
            text.contains("no TLS key exchange group in common")
                && text.contains("require-hybrid")
                && text.contains("key_exchange"),
            "{text}"
        );
        // Another handshake failure keeps its generic wording.
        let other = tls_alert_error(40, "peer is incompatible: NoCipherSuitesInCommon").to_string();
        assert!(other.contains("the broker ended the handshake"), "{other}");
    }

    #[test]
    fn not_authorized_displays_the_broker_message_as_is() {
        let e = ClientError::from_error_frame(&ErrorFrame::new(
            0,
            ErrorCode::NotAuthorized,
            "not authorized: spiffe://strongbox.dev/bob may not publish demo.greetings",
        ));
        assert_eq!(
            e.to_string(),
            "not authorized: spiffe://strongbox.dev/bob may not publish demo.greetings"
        );
        assert_eq!(e.code(), Some(ErrorCode::NotAuthorized));
        assert!(!e.is_retriable());
    }

    #[test]
    fn empty_broker_message_falls_back_to_the_code_name() {
        let e = ClientError::from_code(ErrorCode::UnknownTopic.as_u16(), String::new());
        assert_eq!(e.to_string(), "unknown topic");
    }

    #[test]
    fn authentication_failed_code_reads_as_a_rejected_certificate() {
        let e = ClientError::from_code(ErrorCode::AuthenticationFailed.as_u16(), "revoked".into());
        assert_eq!(
            e.to_string(),
            "the broker rejected this client's certificate: revoked"
        );
    }

    #[test]
    fn certificate_alerts_are_authentication_failures() {
        for alert in [42u8, 45, 48, 116] {
            assert!(matches!(
                tls_alert_error(alert, ""),
                ClientError::Authentication(_)
            ));
        }
        assert!(matches!(tls_alert_error(120, ""), ClientError::Tls(_)));
        assert_eq!(
            tls_alert_error(48, "").to_string(),
            "the broker rejected this client's certificate: unknown CA (TLS alert 48)"
        );
    }

    #[test]
    fn retriable_codes_follow_the_protocol() {
        assert!(
            ClientError::from_code(ErrorCode::ShuttingDown.as_u16(), String::new()).is_retriable()
        );
        assert!(ClientError::ConnectionLost("x".into()).is_retriable());
        assert!(!ClientError::Authentication("x".into()).is_retriable());
    }

    #[test]
    fn permanent_and_transient_codes() {
        for code in [
            ErrorCode::DataDamaged,
            ErrorCode::KeyDestroyed,
            ErrorCode::NotAuthorized,
        ] {
            let e = ClientError::from_code(code.as_u16(), String::new());
            assert!(!e.is_retriable(), "{code}");
            assert_eq!(e.code(), Some(code));
        }
        for code in [
            ErrorCode::ShuttingDown,
            ErrorCode::PartitionUnavailable,
            ErrorCode::Timeout,
        ] {
            assert!(
                ClientError::from_code(code.as_u16(), String::new()).is_retriable(),
                "{code}"
            );
        }
        let timeout = ClientError::Timeout("no ack".into());
        assert_eq!(timeout.code(), Some(ErrorCode::Timeout));
    }

    #[test]
    fn a_damaged_partition_names_topic_partition_and_range() {
        let e = ClientError::PartitionDamaged {
            topic: "orders".into(),
            partition: 3,
            code: ErrorCode::DataDamaged.as_u16(),
            first_offset: 350,
            end_offset: Some(360),
            skipped: false,
            message: "frame at offset 350 fails authentication".into(),
        };
        assert_eq!(
            e.to_string(),
            "orders/3: records 350..360 cannot be read; the partition is stopped: \
             frame at offset 350 fails authentication"
        );
        assert_eq!(e.code(), Some(ErrorCode::DataDamaged));
        assert!(!e.is_retriable());
        let e = ClientError::PartitionDamaged {
            topic: "orders".into(),
            partition: 0,
            code: ErrorCode::DataDamaged.as_u16(),
            first_offset: 0,
            end_offset: None,
            skipped: false,
            message: "x".into(),
        };
        assert_eq!(
            e.to_string(),
            "orders/0: records from 0 on cannot be read; the partition is stopped: x"
        );
        let e = ClientError::PartitionDamaged {
            topic: "orders".into(),
            partition: 0,
            code: ErrorCode::DataDamaged.as_u16(),
            first_offset: 5,
            end_offset: Some(9),
            skipped: true,
            message: "x".into(),
        };
        assert_eq!(e.to_string(), "orders/0: records 5..9 were skipped: x");
    }

    #[test]
    fn unknown_codes_keep_the_number() {
        let e = ClientError::from_code(60_000, "new".into());
        assert_eq!(e.to_string(), "broker error 60000: new");
    }
}
