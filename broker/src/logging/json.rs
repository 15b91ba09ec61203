//! The `json` log format: one JSON object per line, with fields whose names
//! and meaning do not change between releases (a log shipper's parser
//! depends on them). Every line has exactly these keys:
//!
//! | key | value |
//! | --- | --- |
//! | `timestamp` | RFC 3339 time in UTC, microseconds (`2025-03-01T12:00:00.123456Z`) |
//! | `level` | `error`, `warn`, `info`, `debug` or `trace` |
//! | `target` | the module that logged (`strongbox_broker::server::run`) |
//! | `message` | the event's message (`""` when it has none) |
//! | `fields` | an object of the event's other fields (`{}` when none) |
//! | `spans` | an object, one key per enclosing span name (`connection`), each an object of that span's fields; `{}` outside any span. When spans of one name nest, the innermost wins |
//!
//! Field values are JSON numbers and booleans when the code logged them
//! as such, strings otherwise.
//!
//! tracing-subscriber has a JSON format of its own, but its layout
//! (`fields.message`, a `spans` list, upper-case levels) is the crate's
//! choice and may change with it; this one is ours and documented.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter of `log.format = "json"`. Use it with
/// [`JsonFields`] as the field formatter, so span fields are stored as
/// JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();

        let mut fields = FieldMap::default();
        event.record(&mut fields);
        let message = fields.message.take().unwrap_or_default();

        let mut spans = Map::new();
        if let Some(scope) = ctx.event_scope() {
            // From the root down, so an inner span of the same name wins.
            for span in scope.from_root() {
                let ext = span.extensions();
                let values = ext
                    .get::<FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(&f.fields).ok())
                    .unwrap_or_default();
                spans.insert(span.name().to_owned(), Value::Object(values));
            }
        }

        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert(
            "level".into(),
            Value::String(meta.level().as_str().to_ascii_lowercase()),
        );
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        line.insert("message".into(), Value::String(message));
        line.insert("fields".into(), Value::Object(fields.values));
        line.insert("spans".into(), Value::Object(spans));
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// Collects an event's fields; `message` is kept apart.
#[derive(Default)]
struct FieldMap {
    message: Option<String>,
    values: Map<String, Value>,
}

impl FieldMap {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.values.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for FieldMap {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.put(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// The field formatter to pair with [`JsonLines`].
pub fn span_fields() -> JsonFields {
    JsonFields::new()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<Map<String, Value>> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .fmt_fields(span_fields())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().expect("lock").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        text.lines()
            .map(|l| match serde_json::from_str::<Value>(l) {
                Ok(Value::Object(m)) => m,
                other => panic!("not a JSON object per line: {l:?} ({other:?})"),
            })
            .collect()
    }

    #[test]
    fn every_line_has_the_documented_keys() {
        let got = lines(|| {
            let span = tracing::info_span!("connection", id = 7u64, principal = "alice");
            let _in = span.enter();
            tracing::warn!(
                topic = "orders",
                partition = 3u32,
                ok = false,
                "slow \"fsync\"\nagain"
            );
        });
        assert_eq!(got.len(), 1, "a newline in a message stays on one line");
        let line = &got[0];
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        let mut expected = vec!["timestamp", "level", "target", "message", "fields", "spans"];
        expected.sort_unstable();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(line["level"], "warn");
        assert_eq!(line["message"], "slow \"fsync\"\nagain");
        assert_eq!(line["fields"]["topic"], "orders");
        assert_eq!(line["fields"]["partition"], 3);
        assert_eq!(line["fields"]["ok"], false);
        assert_eq!(line["spans"]["connection"]["id"], 7);
        assert_eq!(line["spans"]["connection"]["principal"], "alice");
        let ts = line["timestamp"].as_str().expect("timestamp");
        assert!(ts.ends_with('Z') && ts.len() >= 20, "{ts}");
        assert!(line["target"].as_str().expect("target").contains("json"));
    }

    #[test]
    fn outside_spans_and_without_fields_the_objects_are_empty() {
        let got = lines(|| tracing::info!("started"));
        assert_eq!(got[0]["fields"], Value::Object(Map::new()));
        assert_eq!(got[0]["spans"], Value::Object(Map::new()));
        assert_eq!(got[0]["message"], "started");
    }

    #[test]
    fn display_and_debug_values_are_strings() {
        let addr: std::net::SocketAddr = "127.0.0.1:7443".parse().expect("addr");
        let got = lines(|| tracing::info!(%addr, list = ?[1, 2], "bound"));
        assert_eq!(got[0]["fields"]["addr"], "127.0.0.1:7443");
        assert_eq!(got[0]["fields"]["list"], "[1, 2]");
    }
}
