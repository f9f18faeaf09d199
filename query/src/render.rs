//! Response bodies built around stored JSON: the read model keeps each report's ready-made
//! JSON (`doc`), and these helpers splice it into the SPEC §2 envelope as bytes, without
//! parsing or re-serialising it. The field order is the one `shared::http::Envelope` writes:
//! `success, data, instance, meta`.
//!
//! Invariant: `doc` is written only by the projection, as `serde_json::to_string(&Report)`
//! (a NOT NULL column), so splicing it yields valid JSON without a parse per row.

use serde::Serialize;

/// The per-instance parts of a success envelope, built once at start-up.
#[derive(Debug, Clone)]
pub struct Frame {
    /// `,"instance":"query-1"`.
    instance_field: Vec<u8>,
}

/// What opens every success body whose data we splice.
pub const OPEN: &[u8] = br#"{"success":true,"data":"#;

/// `meta` of a list (SPEC §2, §7.1). `page` and `total_pages` describe `page=N` answers and
/// are left out of cursor answers; `next_cursor` is left out on the last page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Meta {
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<i64>,
    pub per_page: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_pages: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// More than `total` match (text and place filters count up to a cap).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub total_capped: bool,
}

impl Frame {
    pub fn new(instance: &str) -> Frame {
        let mut instance_field = br#","instance":"#.to_vec();
        // A string always serialises.
        instance_field.extend(serde_json::to_vec(instance).unwrap_or_else(|_| b"\"\"".to_vec()));
        Frame { instance_field }
    }

    /// A body buffer opened for `data`, with room for a typical page.
    pub fn open(capacity: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(capacity);
        body.extend_from_slice(OPEN);
        body
    }

    /// Closes a body opened with [`Frame::open`] whose `data` has been written.
    pub fn close(&self, body: &mut Vec<u8>, meta: Option<&Meta>) {
        body.extend_from_slice(&self.instance_field);
        if let Some(meta) = meta {
            body.extend_from_slice(br#","meta":"#);
            // Integers and a plain string always serialise.
            let _ = serde_json::to_writer(&mut *body, meta);
        }
        body.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_envelopes_are_json() {
        let check = |data: &str, meta: Option<Meta>, expect: serde_json::Value| {
            let frame = Frame::new("query-\"1\"");
            let mut body = Frame::open(64);
            body.extend_from_slice(data.as_bytes());
            frame.close(&mut body, meta.as_ref());
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, expect, "{}", String::from_utf8_lossy(&body));
        };
        check(
            r#"{"id":1}"#,
            None,
            serde_json::json!({"success": true, "data": {"id": 1}, "instance": "query-\"1\""}),
        );
        check(
            "[]",
            Some(Meta {
                total: 0,
                page: Some(1),
                per_page: 20,
                total_pages: Some(0),
                next_cursor: None,
                total_capped: false,
            }),
            serde_json::json!({"success": true, "data": [], "instance": "query-\"1\"",
                "meta": {"total": 0, "page": 1, "per_page": 20, "total_pages": 0}}),
        );
    }
}
