//! Place cells: the coarse grid of the world that the full-text index carries beside the
//! words, so that `q=` with a place (`bbox=`, or the box around a `near=` radius) is one
//! GIN lookup of "these words in these cells" rather than a scan of every report in the place
//! or of every report with the words.
//!
//! Every located report is in one cell of each of [`LEVELS`] (`report_cells(lat, lng)` in
//! `sql/query.sql`, indexed with `search` in `read_reports_search_place`); [`cover`] gives
//! the cells of one level that together contain a box. A report inside the box is always in
//! one of them (the same IEEE arithmetic on both sides, and `floor` is monotonic); the cells
//! stick out of the box, so the exact box is tested on each candidate too.
//!
//! Guarantees: [`cell`] is `report_cells`' formula term for term (a test compares them in
//! PostgreSQL); a cover never has more than [`MAX_COVER`] cells.

use shared::geo::{self, BBox};
use shared::model::Location;

/// The side of a cell at each level, in degrees: 0.005° (~550 m) up to 20.48°, each four
/// times the one before. Four (not two) keeps the index at seven entries per report; a box is
/// then covered by at most [`MAX_COVER`] cells that reach at most about twice its side past
/// it. The finest level is about the smallest place a person searches in (a neighbourhood);
/// a smaller box is covered by one to four of its cells.
pub const LEVELS: [f64; 7] = [0.005, 0.02, 0.08, 0.32, 1.28, 5.12, 20.48];

/// Most cells a cover may have. GIN merges the posting list of every cell asked for, so each
/// cell costs (121 fine cells of a 30 km² box took 50 ms where 4 coarser ones took 6 ms for a
/// word of 8 % of a million reports), while too few coarse cells read reports far outside the
/// box (a 4 km² box in 4 cells of 0.02°: 5× its area). Measured over boxes of 1–20 km²: 16
/// cells cost up to 17 ms at the worst box, 36 up to 10.5 ms, 64 no better than 36 (README
/// "At a million reports").
pub const MAX_COVER: usize = 36;

/// The cell of level `level` (an index into [`LEVELS`]) that holds a point: the level in
/// bits 48.., the column (from lng -180) in bits 24..48, the row (from lat -90) below; at
/// 0.005° there are 72 001 columns and 36 001 rows, well inside 24 bits.
pub fn cell(level: usize, lat: f64, lng: f64) -> i64 {
    let side = LEVELS[level];
    let x = ((lng + 180.0) / side).floor() as i64;
    let y = ((lat + 90.0) / side).floor() as i64;
    ((level as i64) << 48) | (x << 24) | y
}

/// The cells of the finest level at which at most [`MAX_COVER`] of them contain the box, or
/// `None` when even the coarsest needs more (a box of most of a hemisphere: the words alone
/// are then the better index condition).
pub fn cover(b: &BBox) -> Option<Vec<i64>> {
    LEVELS.iter().enumerate().find_map(|(level, side)| {
        let col = |lng: f64| ((lng + 180.0) / side).floor() as i64;
        let row = |lat: f64| ((lat + 90.0) / side).floor() as i64;
        let (x0, x1) = (col(b.min_lng), col(b.max_lng));
        let (y0, y1) = (row(b.min_lat), row(b.max_lat));
        let n = usize::try_from((x1 - x0 + 1) * (y1 - y0 + 1)).ok()?;
        (n <= MAX_COVER).then(|| {
            (x0..=x1)
                .flat_map(|x| (y0..=y1).map(move |y| ((level as i64) << 48) | (x << 24) | y))
                .collect()
        })
    })
}

/// A box that contains every point within `radius_m` (great-circle) of `at`, or `None` where
/// no plain box does (a circle over a pole or across the antimeridian).
pub fn around(at: Location, radius_m: f64) -> Option<BBox> {
    // Along a meridian a degree is the same everywhere; along a parallel it shrinks with
    // cos(lat), least at the circle's edge nearest the pole. 1 % more keeps rounding outside.
    let dlat = (radius_m / geo::EARTH_RADIUS_M).to_degrees() * 1.01;
    let (min_lat, max_lat) = (at.lat - dlat, at.lat + dlat);
    if min_lat <= -90.0 || max_lat >= 90.0 {
        return None;
    }
    let widest = min_lat.abs().max(max_lat.abs()).to_radians().cos();
    let dlng = dlat / widest;
    let (min_lng, max_lng) = (at.lng - dlng, at.lng + dlng);
    if min_lng < -180.0 || max_lng > 180.0 {
        return None;
    }
    Some(BBox {
        min_lng,
        min_lat,
        max_lng,
        max_lat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(raw: &str) -> BBox {
        geo::parse_bbox(raw).expect("box")
    }

    #[test]
    fn covers_hold_every_point_of_their_box() {
        let check = |raw: &str, expect_level: i64, expect_cells: usize| {
            let b = bbox(raw);
            let cells = cover(&b).expect("a cover");
            assert!(cells.len() <= MAX_COVER, "{raw}: {} cells", cells.len());
            let level = cells[0] >> 48;
            assert_eq!((level, cells.len()), (expect_level, expect_cells), "{raw}");
            // Corners, edges and inner points of the box all fall in its cover.
            for i in 0..=10 {
                for j in 0..=10 {
                    let lng = b.min_lng + (b.max_lng - b.min_lng) * f64::from(i) / 10.0;
                    let lat = b.min_lat + (b.max_lat - b.min_lat) * f64::from(j) / 10.0;
                    let c = cell(level as usize, lat, lng);
                    assert!(cells.contains(&c), "{raw}: ({lat}, {lng}) in cell {c}");
                }
            }
        };
        // The bench's boxes: ~1 km² in Bandung, 30 km² in Jakarta, 2° around Jakarta.
        check("107.6046,-6.9223,107.6136,-6.9133", 0, 9);
        check("106.80,-6.20,106.85,-6.15", 1, 9);
        check("106.0,-7.0,108.0,-5.0", 4, 9);
        // A point, the world's corners, a box on cell edges.
        check("10,10,10,10", 0, 1);
        check("179.999,89.999,180,90", 0, 4);
        check("-180,-90,-179.999,-89.999", 0, 1);
        check("0,0,0.04,0.04", 1, 9);
        // A box of a hemisphere needs more than the coarsest level allows.
        assert_eq!(cover(&bbox("-180,-90,180,90")), None);
    }

    #[test]
    fn circles_fit_their_box() {
        let check = |lat: f64, lng: f64, radius_m: f64| {
            let at = Location { lat, lng };
            let b = around(at, radius_m).expect("a box");
            // Points on the circle at every bearing lie inside the box.
            for deg in (0..360).step_by(5) {
                let bearing = f64::from(deg).to_radians();
                let d = radius_m / geo::EARTH_RADIUS_M;
                let (la, lo) = (lat.to_radians(), lng.to_radians());
                let lat2 = (la.sin() * d.cos() + la.cos() * d.sin() * bearing.cos()).asin();
                let lng2 = lo
                    + (bearing.sin() * d.sin() * la.cos()).atan2(d.cos() - la.sin() * lat2.sin());
                let (lat2, lng2) = (lat2.to_degrees(), lng2.to_degrees());
                let p = Location {
                    lat: lat2,
                    lng: lng2,
                };
                assert!(
                    (geo::haversine_m(at, p) - radius_m).abs() < 1.0,
                    "bearing {deg}"
                );
                assert!(
                    (b.min_lat..=b.max_lat).contains(&lat2)
                        && (b.min_lng..=b.max_lng).contains(&lng2),
                    "({lat}, {lng}) r={radius_m}: ({lat2}, {lng2}) outside {b:?}"
                );
            }
        };
        check(-6.1754, 106.8272, 1_000.0);
        check(-6.1754, 106.8272, 50_000.0);
        check(60.0, 10.0, 50_000.0);
        check(-75.0, -60.0, 20_000.0);
        // Over a pole or across the antimeridian there is no plain box.
        assert_eq!(
            around(
                Location {
                    lat: 89.9,
                    lng: 0.0
                },
                50_000.0
            ),
            None
        );
        assert_eq!(
            around(
                Location {
                    lat: 0.0,
                    lng: 179.9
                },
                50_000.0
            ),
            None
        );
    }
}
