//! Logging setup. Every line goes through [`redact`] and is capped at
//! [`MAX_LINE_BYTES`], whoever writes it: errors quote URLs, connection
//! strings and user data, and a log must never hold a secret or grow by
//! megabytes because one request carried them.

use std::io::Write;
use std::sync::LazyLock;

use regex::Regex;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Longest log line written, in bytes.
pub const MAX_LINE_BYTES: usize = 16 << 10;

/// Logs to stderr, filtered by `RUST_LOG` or else by `default_filter`.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting)
        .try_init();
}

/// Hides secrets in `text`: presigned-URL signatures and credentials,
/// passwords in connection URLs, bearer tokens, and `key=value` secrets.
pub fn redact(text: &str) -> String {
    static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
        [
            // Presigned S3 URLs (SigV4 and V2 query authentication).
            (
                r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId)=[^&\s\x22'<>]+",
                "$1=[redacted]",
            ),
            // user:password@ in any URL.
            (
                r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s\x22']+):[^@/\s\x22']+@",
                "$1:[redacted]@",
            ),
            (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+", "$1 [redacted]"),
            // mlq's own credentials (tokens, sessions, tickets, login
            // codes) wherever they appear, e.g. a `?ticket=` in a logged URL.
            (r"\b(mlq[slt]?_[0-9a-f]{32})_[A-Za-z0-9_-]{43}", "${1}_[redacted]"),
            // `key=value` and `"key": "value"` secrets, `s3_secret_key` too
            // (but not `lease_token`: leases are not secrets).
            (
                r#"(?i)\b((?:\w*_)?(?:password|passwd|secret|secret_key|access_key|api_key)|token|authorization)(\x22?\s*[=:]\s*\x22?)[^\s\x22&,;}]+"#,
                "$1$2[redacted]",
            ),
        ]
        .into_iter()
        .map(|(pattern, replacement)| (Regex::new(pattern).expect("valid pattern"), replacement))
        .collect()
    });
    let mut text = std::borrow::Cow::Borrowed(text);
    for (rule, replacement) in RULES.iter() {
        if let std::borrow::Cow::Owned(replaced) = rule.replace_all(&text, *replacement) {
            text = std::borrow::Cow::Owned(replaced);
        }
    }
    text.into_owned()
}

/// Caps a formatted line, keeping its newline.
fn cap(mut line: String) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    let mut end = MAX_LINE_BYTES - 40;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let dropped = line.len() - end;
    line.truncate(end);
    line.push_str(&format!("… [{dropped} bytes cut]\n"));
    line
}

/// Hands each event's formatted line to stderr, redacted and capped.
struct Redacting;

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(Vec::new())
    }
}

/// Collects one event's output; writes it when dropped.
struct LineWriter(Vec<u8>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes a line at once; a runaway one stops growing.
        let room = (MAX_LINE_BYTES * 4).saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = cap(redact(&String::from_utf8_lossy(&self.0)));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let url = "http://s3:9000/mlq/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abcdef0123";
        let out = redact(&format!("GET {url} failed"));
        assert!(
            !out.contains("abcdef0123") && !out.contains("AKIA"),
            "{out}"
        );
        assert!(out.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"), "{out}");
        let out = redact("cannot reach postgres://mlq:hunter2@db:5432/mlq");
        assert_eq!(out, "cannot reach postgres://mlq:[redacted]@db:5432/mlq");
        let out = redact("header Authorization: Bearer eyJhbGciOi.x-y_z");
        assert!(!out.contains("eyJ"), "{out}");
        let out = redact(r#"config {"secret_key": "wJalrXUt", "password=pw1"}"#);
        assert!(!out.contains("wJalrXUt") && !out.contains("pw1"), "{out}");
        let out = redact("s3_secret_key = \"wJal\" MLQ_S3_SECRET_KEY=abc");
        assert!(!out.contains("wJal") && !out.contains("abc"), "{out}");
        let out = redact("task 1 lease_token=5f0c ok");
        assert!(out.contains("5f0c"), "lease tokens are not secrets: {out}");
    }

    #[test]
    fn long_lines_are_capped() {
        let line = cap(format!("{}\n", "x".repeat(1 << 20)));
        assert!(line.len() <= MAX_LINE_BYTES);
        assert!(line.ends_with("cut]\n"));
    }
}
