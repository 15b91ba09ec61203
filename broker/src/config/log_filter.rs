//! The `log.level` filter syntax: parsed here, where the configuration
//! is checked, and used by the log set-up (`crate::logging`).

use tracing_subscriber::EnvFilter;

/// The level names a directive may use.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Parses a `RUST_LOG`-style filter.
///
/// # Errors
///
/// The directive that does not parse, in the parser's words.
pub fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .with_regex(false)
        .parse(text)
        .map_err(|e| e.to_string())
}

/// Parses the filter of `log.level`, more strictly than `RUST_LOG`: a
/// directive without `=` must be a level. (The filter syntax reads a bare
/// word as a target to log at every level, so a misspelt level such as
/// `inf` would silently turn into a target that matches nothing.)
///
/// # Errors
///
/// The directive that is wrong, and why.
pub fn parse_configured_filter(text: &str) -> Result<EnvFilter, String> {
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains('=') || directive.contains('[') {
            continue;
        }
        if !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level ({}); per-target directives are written \
                 target=level",
                LEVELS.join(", ")
            ));
        }
    }
    parse_filter(text)
}
