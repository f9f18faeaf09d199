//! The list parameters (`q`, `near`, `radius_m`, `bbox`, `cursor`, paging) under the
//! time-boxed mutation fuzzer (`FUZZ_SECONDS`). Property: never a panic; anything accepted is
//! in range, and an accepted cursor encodes back to itself.

use query::cursor::Cursor;
use query::search::{ListQuery, Q_MAX_CHARS};
use shared::geo::MAX_RADIUS_M;
use shared::testkit::fuzz;

#[test]
fn fuzz_list_parameters() {
    let corpus: Vec<Vec<u8>> = [
        "near=-6.2,106.8&radius_m=500&q=jalan+rusak&status=pending&per_page=5",
        "bbox=106.7,-6.3,106.9,-6.1&category=kebersihan&page=2",
        "cursor=n.1750000000000000.0b6f3c1e2d4a4b5c8d9e0f1a2b3c4d5e",
        "near=1,1&cursor=d.40a0000000000000.0b6f3c1e2d4a4b5c8d9e0f1a2b3c4d5e",
        "q=caf%C3%A9",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let runs = fuzz::run("list parameters", fuzz::budget(), &corpus, |input| {
        let text = String::from_utf8_lossy(input);
        let Ok(params) = shared::http::parse_query(&text) else {
            return;
        };
        if let Ok(q) = ListQuery::parse(&params) {
            assert!((1..=100).contains(&q.per_page));
            assert!(q
                .q
                .as_ref()
                .is_none_or(|w| w.chars().count() <= Q_MAX_CHARS));
            if let Some((at, r)) = q.near {
                assert!(r > 0.0 && r <= MAX_RADIUS_M && at.lat.abs() <= 90.0);
            }
            assert!(!(q.near.is_some() && q.bbox.is_some()));
        }
        for (_, v) in &params {
            if let Ok(c) = Cursor::decode(v) {
                assert_eq!(Cursor::decode(&c.encode()), Ok(c));
            }
        }
    });
    assert!(runs > 1000, "only {runs} runs");
}
