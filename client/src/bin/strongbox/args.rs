//! Parsers for argument values. They run inside clap, so a bad value is a
//! usage error (exit code 2) with clap's message.

use std::time::Duration;

use strongbox_client::StartPosition;
use strongbox_client::protocol::model::{Durability, Operations};
use strongbox_client::protocol::rfc3339;

/// `NAME=VALUE` for `--header`.
pub(crate) fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        Some(_) => Err("the header name before '=' is empty".into()),
        None => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// `prefer-hybrid`, `require-hybrid` or `classical` for `--key-exchange`.
pub(crate) fn key_exchange(s: &str) -> Result<strongbox_client::KeyExchange, String> {
    strongbox_client::KeyExchange::parse(s).ok_or_else(|| {
        format!("{s:?} is not a key exchange policy (prefer-hybrid, require-hybrid, classical)")
    })
}

/// `earliest`, `latest`, an offset, or `@` and an RFC 3339 time.
pub(crate) fn start_position(s: &str) -> Result<StartPosition, String> {
    match s {
        "earliest" => Ok(StartPosition::Earliest),
        "latest" => Ok(StartPosition::Latest),
        _ => {
            if let Some(when) = s.strip_prefix('@') {
                return rfc3339::parse_ms(when)
                    .map(StartPosition::Timestamp)
                    .map_err(|e| e.to_string());
            }
            s.parse::<u64>().map(StartPosition::Offset).map_err(|_| {
                format!(
                    "expected earliest, latest, an offset or @TIME (RFC 3339, such as \
                     @2026-01-31T09:00:00Z), got {s:?}"
                )
            })
        }
    }
}

/// `fsync`, `interval:MS` or `none`.
pub(crate) fn durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "none" => Ok(Durability::None),
        _ => {
            let ms = s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse::<u32>().ok())
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    format!("expected fsync, none or interval:MS with MS at least 1, got {s:?}")
                })?;
            Ok(Durability::Interval { interval_ms: ms })
        }
    }
}

/// A duration such as `7d`, `12h`, `90s`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 7d, 12h or 30m, got {s:?} ({e})"))?;
    if d.is_zero() {
        return Err("the duration must be more than zero".into());
    }
    Ok(d)
}

/// A topic's retention age in milliseconds as `CreateTopic` carries it:
/// a duration, or `forever` (0 on the wire: no age limit).
pub(crate) fn retention(s: &str) -> Result<u64, String> {
    if s.trim() == "forever" {
        return Ok(0);
    }
    duration(s)
        .map(millis)
        .map_err(|e| format!("{e}; or write forever to keep data whatever its age"))
}

/// A comma-separated list of operation names.
pub(crate) fn operations(s: &str) -> Result<Operations, String> {
    let mut ops = Operations::default();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let op = Operations::from_name(name).ok_or_else(|| {
            let valid: Vec<&str> = Operations::NAMED.iter().map(|(_, n)| *n).collect();
            format!(
                "unknown operation {name:?}; expected some of {}",
                valid.join(", ")
            )
        })?;
        ops = ops.union(op);
    }
    if ops.is_empty() {
        return Err("name at least one operation".into());
    }
    Ok(ops)
}

/// Milliseconds in a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_forms() {
        assert_eq!(start_position("earliest"), Ok(StartPosition::Earliest));
        assert_eq!(start_position("latest"), Ok(StartPosition::Latest));
        assert_eq!(start_position("42"), Ok(StartPosition::Offset(42)));
        assert_eq!(
            start_position("@2026-01-31T09:00:00Z"),
            Ok(StartPosition::Timestamp(1_769_850_000_000))
        );
        assert_eq!(
            start_position("@2026-01-31T10:00:00.250+01:00"),
            Ok(StartPosition::Timestamp(1_769_850_000_250))
        );
        assert!(start_position("-1").is_err());
        assert!(start_position("yesterday").is_err());
        assert!(start_position("@2026-13-01T00:00:00Z").is_err());
        assert!(
            start_position("@2026-01-31").is_err(),
            "a date alone is not RFC 3339"
        );
    }

    #[test]
    fn headers() {
        assert_eq!(header("kind=signup"), Ok(("kind".into(), "signup".into())));
        assert_eq!(header("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(header("empty="), Ok(("empty".into(), String::new())));
        assert!(header("novalue").is_err());
        assert!(header("=x").is_err());
    }

    #[test]
    fn durabilities() {
        assert_eq!(durability("fsync"), Ok(Durability::Fsync));
        assert_eq!(durability("none"), Ok(Durability::None));
        assert_eq!(
            durability("interval:250"),
            Ok(Durability::Interval { interval_ms: 250 })
        );
        assert!(durability("interval:0").is_err());
        assert!(durability("interval:").is_err());
        assert!(durability("always").is_err());
    }

    #[test]
    fn durations_and_operations() {
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
        assert_eq!(
            operations("publish,subscribe"),
            Ok(Operations::PUBLISH.union(Operations::SUBSCRIBE))
        );
        assert_eq!(operations(" describe "), Ok(Operations::DESCRIBE));
        let err = operations("publish,read").expect_err("unknown");
        assert!(err.contains("\"read\""), "{err}");
        assert!(operations(",").is_err());
    }
}
