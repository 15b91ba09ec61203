//! Refusal of secrets written into the config file.
//!
//! Config files get copied into tickets, repositories and container images;
//! a PIN or a private key inside one leaks with it. Secrets are referenced by
//! path (a 0600 file) or by environment variable name instead. This scan runs
//! before deserialization so that the operator reads "inline secrets are not
//! accepted" rather than a generic "unknown field".

use toml::{Table, Value};

use super::ConfigError;

/// Field names that only ever hold a secret's value.
const SECRET_NAMES: &[(&str, &str)] = &[
    ("pin", PIN_HINT),
    ("user_pin", PIN_HINT),
    ("so_pin", PIN_HINT),
    ("password", GENERIC_HINT),
    ("passphrase", GENERIC_HINT),
    ("secret", GENERIC_HINT),
    ("private_key", KEY_HINT),
    ("key_pem", KEY_HINT),
    ("kek", KEY_HINT),
];

const PIN_HINT: &str = "put the PIN in a file readable only by the broker (keys.pkcs11.pin_file) or in an environment variable (keys.pkcs11.pin_env)";
const KEY_HINT: &str =
    "write the key to a file readable only by the broker (mode 0600) and give its path";
const GENERIC_HINT: &str = "reference the secret by file path or environment variable name instead";

/// Fails on the first field that holds a secret inline.
pub(super) fn reject_inline_secrets(root: &Table) -> Result<(), ConfigError> {
    scan_table(root, "")
}

fn scan_table(table: &Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let Some((_, hint)) = SECRET_NAMES.iter().find(|(n, _)| n == key) {
            return Err(ConfigError::InlineSecret { field: path, hint });
        }
        scan_value(value, &path)?;
    }
    Ok(())
}

fn scan_value(value: &Value, path: &str) -> Result<(), ConfigError> {
    match value {
        Value::String(s) => check_string(s, path),
        Value::Table(t) => scan_table(t, path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| scan_value(v, &format!("{path}[{i}]"))),
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Datetime(_) => Ok(()),
    }
}

/// PEM text where a path belongs: a private key is a leaked secret, anything
/// else is only a mistake.
fn check_string(s: &str, path: &str) -> Result<(), ConfigError> {
    if !s.contains("-----BEGIN") {
        return Ok(());
    }
    if s.contains("PRIVATE KEY") {
        return Err(ConfigError::InlineSecret {
            field: path.to_string(),
            hint: KEY_HINT,
        });
    }
    Err(ConfigError::invalid(
        path,
        "looks like inline PEM; write it to a file and give the file's path",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Result<(), ConfigError> {
        reject_inline_secrets(&text.parse::<Table>().expect("test TOML parses"))
    }

    #[test]
    fn pin_anywhere_is_refused_with_its_path() {
        let err = scan("[keys.pkcs11]\nmodule = \"x.so\"\npin = \"1234\"\n").unwrap_err();
        assert_eq!(err.field(), Some("keys.pkcs11.pin"));
        assert!(err.to_string().contains("pin_file"), "{err}");
    }

    #[test]
    fn inline_private_key_is_refused() {
        let err = scan(
            "[tls]\nkey = \"-----BEGIN PRIVATE KEY-----\\nMIIB\\n-----END PRIVATE KEY-----\"\n",
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::InlineSecret { .. }));
        assert_eq!(err.field(), Some("tls.key"));
    }

    #[test]
    fn inline_pem_in_a_list_names_the_index() {
        let err = scan("[tls]\ncrls = [\"a.pem\", \"-----BEGIN X509 CRL-----\"]\n").unwrap_err();
        assert_eq!(err.field(), Some("tls.crls[1]"));
    }

    #[test]
    fn references_pass() {
        scan("[keys.pkcs11]\npin_file = \"pin\"\npin_env = \"HSM_PIN\"\n[tls]\nkey = \"k.pem\"\n")
            .unwrap();
    }
}
