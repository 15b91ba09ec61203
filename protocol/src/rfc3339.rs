//! The one text form of an instant that Strongbox writes and reads: RFC 3339
//! in UTC with milliseconds, `2026-01-31T09:00:00.123Z`.
//!
//! Audit records carry their time in this form (and `strongbox audit
//! verify` checks that a record's time is exactly what [`format_ms`]
//! writes); the broker and the CLI show every instant in it (certificate
//! validity, key and access-request times, recipient expiry); and every
//! time an operator types (an ACL rule's `expires_at` in the broker config,
//! `strongbox subscribe --from @TIME`) is read by [`parse_ms`], which takes
//! any RFC 3339 time (any offset, any number of fraction digits) and
//! returns milliseconds since the Unix epoch, rounded down.
//!
//! Pure calendar arithmetic: nothing here reads a clock.
//!
//! ```
//! use strongbox_protocol::rfc3339;
//!
//! assert_eq!(rfc3339::format_ms(1_769_850_000_123).as_deref(), Some("2026-01-31T09:00:00.123Z"));
//! assert_eq!(rfc3339::parse_ms("2026-01-31T10:00:00.123+01:00"), Ok(1_769_850_000_123));
//! ```

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why text is not an RFC 3339 time this crate reads.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rfc3339Error {
    /// The text does not follow RFC 3339 (a date alone, a missing offset,
    /// a month 13).
    #[error("{text:?} is not an RFC 3339 time such as 2026-01-31T09:00:00Z ({reason})")]
    Invalid {
        /// The text, as given.
        text: String,
        /// What the parser found wrong.
        reason: String,
    },
    /// A valid time too far from 1970 for milliseconds in an `i64`.
    #[error("{text:?} is out of range")]
    OutOfRange {
        /// The text, as given.
        text: String,
    },
}

/// `ms` (milliseconds since the Unix epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`,
/// or `None` for an instant outside the years 0000 to 9999, which RFC 3339
/// cannot write.
pub fn format_ms(ms: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

/// Milliseconds since the Unix epoch of an RFC 3339 time, rounded down
/// (toward the past) to a whole millisecond.
///
/// # Errors
///
/// [`Rfc3339Error::Invalid`] for text that is not RFC 3339,
/// [`Rfc3339Error::OutOfRange`] for a time whose milliseconds do not fit an
/// `i64`.
pub fn parse_ms(text: &str) -> Result<i64, Rfc3339Error> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| Rfc3339Error::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })?;
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).map_err(|_| {
        Rfc3339Error::OutOfRange {
            text: text.to_owned(),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_instants() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_769_850_000_123, "2026-01-31T09:00:00.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (-62_167_219_200_000, "0000-01-01T00:00:00.000Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(format_ms(ms).as_deref(), Some(text), "{ms}");
            assert_eq!(parse_ms(text), Ok(ms), "{text}");
        }
        assert_eq!(format_ms(253_402_300_800_000), None);
        assert_eq!(format_ms(-62_167_219_200_001), None);
        assert_eq!(format_ms(i64::MAX), None);
        assert_eq!(format_ms(i64::MIN), None);
    }

    #[test]
    fn parses_offsets_fractions_and_refuses_the_rest() {
        assert_eq!(parse_ms("2026-01-31T09:00:00Z"), Ok(1_769_850_000_000));
        assert_eq!(
            parse_ms("2026-01-31T10:00:00.250+01:00"),
            Ok(1_769_850_000_250)
        );
        // Below a millisecond rounds toward the past, also before 1970.
        assert_eq!(parse_ms("2026-01-31T09:00:00.0009Z"), Ok(1_769_850_000_000));
        assert_eq!(parse_ms("1969-12-31T23:59:59.9995Z"), Ok(-1));
        for bad in [
            "",
            "yesterday",
            "2026-01-31",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-31T09:00:00",
            " 2026-01-31T09:00:00Z",
        ] {
            assert!(
                matches!(parse_ms(bad), Err(Rfc3339Error::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(
            parse_ms("2026-01-31")
                .unwrap_err()
                .to_string()
                .contains("RFC 3339")
        );
    }

    proptest! {
        /// Every instant RFC 3339 can write reads back as itself.
        #[test]
        fn format_then_parse_is_the_identity(ms in -62_167_219_200_000i64..=253_402_300_799_999) {
            let text = format_ms(ms).unwrap();
            prop_assert_eq!(text.len(), 24);
            prop_assert_eq!(parse_ms(&text), Ok(ms));
        }

        /// Parsing never panics, whatever the text.
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = parse_ms(&text);
        }
    }
}
