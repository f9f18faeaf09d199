//! The one Prometheus text-format (0.0.4) renderer behind all three services' `GET /metrics`.
//!
//! Guarantees: every family is introduced by exactly one `# HELP` and one `# TYPE` line before
//! its samples; label values are escaped (backslash, double quote, newline) and HELP texts too
//! (backslash, newline), so an instance or database name can never break the exposition.
//! Metric and label names are our own constants and are written as given.

use std::fmt::{self, Write};

/// The `Content-Type` of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The same as a whole header line, for may_minihttp, whose headers must be `&'static str`.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type: text/plain; version=0.0.4; charset=utf-8";

/// A family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Summary,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Summary => "summary",
        }
    }
}

/// An exposition being written: [`family`](Exposition::family) once per metric name, then
/// its [`sample`](Exposition::sample)s.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition {
            out: String::with_capacity(4096),
        }
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Exposition {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample line: `name{label="value",…} value`, without braces when there are no
    /// labels. `name` may carry a suffix of its family (`_sum`, `_count`).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl fmt::Display,
    ) -> &mut Exposition {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_into(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Appends a label value with `\`, `"` and newline escaped, as the text format requires.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(labels: &[(&str, &str)], expect: &str) {
        let mut e = Exposition::new();
        e.sample("m", labels, 1);
        assert_eq!(e.finish(), expect, "labels {labels:?}");
    }

    #[test]
    fn samples() {
        check(&[], "m 1\n");
        check(&[("db", "a")], "m{db=\"a\"} 1\n");
        check(
            &[("instance", "q-1"), ("route", "/reports/{id}")],
            "m{instance=\"q-1\",route=\"/reports/{id}\"} 1\n",
        );
        check(&[("db", "a\"b")], "m{db=\"a\\\"b\"} 1\n");
        check(&[("db", "a\\b")], "m{db=\"a\\\\b\"} 1\n");
        check(&[("db", "a\nb")], "m{db=\"a\\nb\"} 1\n");
        check(&[("db", "")], "m{db=\"\"} 1\n");
    }

    #[test]
    fn content_type_header_matches() {
        assert_eq!(
            CONTENT_TYPE_HEADER.strip_prefix("Content-Type: "),
            Some(CONTENT_TYPE)
        );
    }

    #[test]
    fn families() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "Things.\nMore \\ things.")
            .sample("x_total", &[], 3)
            .family("y", Kind::Gauge, "Level.")
            .sample("y", &[("db", "a")], format_args!("{:.3}", 1.5));
        e.family("z", Kind::Summary, "Sizes.")
            .sample("z_sum", &[], 7)
            .sample("z_count", &[], 1);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\\nMore \\\\ things.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y Level.\n# TYPE y gauge\ny{db=\"a\"} 1.500\n\
             # HELP z Sizes.\n# TYPE z summary\nz_sum 7\nz_count 1\n"
        );
    }
}
