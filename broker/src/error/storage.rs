//! The wire code of every storage and key error, in one place.
//!
//! Handlers turn errors from `strongbox-storage` into [`BrokerError`]s
//! through the `From` impls below (with `?`, or `BrokerError::from` where
//! the caller adds context); no other file maps a storage or key error to
//! an [`ErrorCode`], so one failure gets one code whichever request met it.
//!
//! There are two tables because a request names one of two things:
//!
//! - a key request (`keys rotate`, `retire`, `compromise`, `destroy`,
//!   `rewrap`) names the key, so a version it names that does not exist is
//!   `not_found`, a transition the key's state forbids is `conflict`, and a
//!   destroy the envelopes still need is `key_in_use`;
//! - a read or an append names a partition, so a key problem met on the way
//!   is `key_unavailable` (the key provider may come back), except a
//!   destroyed key: `key_destroyed` says retrying is pointless.
//!
//! Failures the client can do nothing about are `internal`: logged in full
//! and reported briefly. Messages from storage name files; their absolute
//! paths are cut to the last component before they reach the client.

use strongbox_protocol::ErrorCode;
use strongbox_storage::io::is_storage_full;
use strongbox_storage::keys::KeyError;
use strongbox_storage::log::LogError;

use crate::error::BrokerError;

/// A key request failed.
impl From<KeyError> for BrokerError {
    fn from(e: KeyError) -> Self {
        let code = match &e {
            KeyError::KekNotFound(_) => ErrorCode::NotFound,
            KeyError::InvalidTransition(_) => ErrorCode::Conflict,
            KeyError::InUse { .. } => ErrorCode::KeyInUse,
            KeyError::Destroyed(_) => ErrorCode::KeyDestroyed,
            KeyError::Unavailable(_) | KeyError::Login(_) => ErrorCode::KeyUnavailable,
            _ => return Self::internal("a key operation", e),
        };
        Self::redacted(code, &e.to_string())
    }
}

/// A read or an append on a partition log failed. The caller logs the
/// error with the partition's name and prefixes that name to the message.
impl From<&LogError> for BrokerError {
    fn from(e: &LogError) -> Self {
        let code = match e {
            LogError::StorageFull { .. } => ErrorCode::StorageFull,
            LogError::Failed { .. } => ErrorCode::StorageFailed,
            LogError::Io { source, .. } if is_storage_full(source) => ErrorCode::StorageFull,
            e if e.is_damage() => ErrorCode::DataDamaged,
            LogError::KeyCreate { .. } => ErrorCode::KeyUnavailable,
            LogError::Key {
                source: KeyError::Destroyed(_),
                ..
            } => ErrorCode::KeyDestroyed,
            LogError::Key { .. } => ErrorCode::KeyUnavailable,
            _ => ErrorCode::PartitionUnavailable,
        };
        Self::redacted(code, &e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn code(e: KeyError) -> ErrorCode {
        BrokerError::from(e).code
    }

    /// Every key error a key request can meet has one code, whichever
    /// request (keys admin or rewrap) met it.
    #[test]
    fn key_errors_of_key_requests() {
        assert_eq!(
            code(KeyError::KekNotFound("broker/v3".into())),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(KeyError::InvalidTransition("v1 is destroyed".into())),
            ErrorCode::Conflict
        );
        assert_eq!(
            code(KeyError::InUse {
                kek: "broker/v1".into(),
                segments: 4,
            }),
            ErrorCode::KeyInUse
        );
        assert_eq!(
            code(KeyError::Destroyed("broker/v1".into())),
            ErrorCode::KeyDestroyed
        );
        assert_eq!(
            code(KeyError::Unavailable("token gone".into())),
            ErrorCode::KeyUnavailable
        );
        assert_eq!(
            code(KeyError::Login("bad PIN".into())),
            ErrorCode::KeyUnavailable
        );
        assert_eq!(code(KeyError::Random), ErrorCode::Internal);
        assert_eq!(
            code(KeyError::KekExists("broker/v2".into())),
            ErrorCode::Internal
        );
    }

    /// An internal failure tells the client no more than that it happened.
    #[test]
    fn internal_key_errors_keep_their_text_out_of_the_reply() {
        let e = BrokerError::from(KeyError::Config("module /opt/hsm/lib.so: no slot 7".into()));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("slot 7"), "{}", e.message);
    }

    /// Storage messages reach the client without the broker's directories.
    #[test]
    fn key_error_messages_lose_absolute_paths() {
        let e = BrokerError::from(KeyError::Unavailable(
            "cannot load module /usr/lib/softhsm/libsofthsm2.so".into(),
        ));
        assert_eq!(e.code, ErrorCode::KeyUnavailable);
        assert!(e.message.contains("libsofthsm2.so"), "{}", e.message);
        assert!(!e.message.contains("/usr/lib"), "{}", e.message);
    }

    fn log_code(e: &LogError) -> ErrorCode {
        BrokerError::from(e).code
    }

    fn key_under_segment(source: KeyError) -> LogError {
        LogError::Key {
            segment: PathBuf::from("/var/lib/strongbox/log/t/0/00000000000000000000.log"),
            source,
        }
    }

    /// On the data path a key problem is the partition's: unavailable,
    /// unless the key is destroyed for good.
    #[test]
    fn key_errors_of_partition_requests() {
        assert_eq!(
            log_code(&key_under_segment(KeyError::Destroyed("t/v1".into()))),
            ErrorCode::KeyDestroyed
        );
        assert_eq!(
            log_code(&key_under_segment(KeyError::KekNotFound("t/v1".into()))),
            ErrorCode::KeyUnavailable
        );
        assert_eq!(
            log_code(&key_under_segment(KeyError::Unavailable(
                "token gone".into()
            ))),
            ErrorCode::KeyUnavailable
        );
    }

    #[test]
    fn storage_errors_of_partition_requests() {
        let dir = PathBuf::from("/var/lib/strongbox/log/t/0");
        assert_eq!(
            log_code(&LogError::StorageFull {
                dir: dir.clone(),
                reason: "no space left on device".into(),
            }),
            ErrorCode::StorageFull
        );
        assert_eq!(
            log_code(&LogError::Failed {
                dir: dir.clone(),
                reason: "fsync failed".into(),
            }),
            ErrorCode::StorageFailed
        );
        assert_eq!(
            log_code(&LogError::Io {
                op: "writing",
                path: dir.join("00000000000000000000.log"),
                source: std::io::Error::from_raw_os_error(28),
            }),
            ErrorCode::StorageFull
        );
        assert_eq!(
            log_code(&LogError::EnvelopeMissing {
                segment: dir.join("00000000000000000000.log"),
            }),
            ErrorCode::DataDamaged
        );
        let closed = BrokerError::from(&LogError::Closed { dir });
        assert_eq!(closed.code, ErrorCode::PartitionUnavailable);
        assert!(!closed.message.contains("/var/lib"), "{}", closed.message);
    }
}
