//! Geography of reports (SPEC §7.1): checking a location, parsing the `near=` / `radius_m=` /
//! `bbox=` parameters, and the great-circle arithmetic both sides agree on.
//!
//! The read model indexes each report as a 3-D point on a sphere of [`EARTH_RADIUS_M`]
//! (`report_earth_point` in `sql/query.sql`). The straight-line ("chord") distance between two
//! such points grows strictly with their great-circle distance, so the index can order by the
//! chord, and [`chord_to_metres`] turns it into exactly the haversine distance.
//!
//! Guarantees: only finite, in-range coordinates pass [`check_location`]; every parse error
//! is a message naming the parameter (the caller turns it into a 400).

use crate::model::Location;

/// The IUGG mean Earth radius in metres: the sphere our distances are measured on. The
/// haversine distance on it is within 0.5 % of the WGS84 ellipsoid's geodesic everywhere.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// `radius_m` when `near=` comes without one (SPEC §7.1).
pub const DEFAULT_RADIUS_M: f64 = 1_000.0;
/// Largest `radius_m` (SPEC §7.1): a city's extent; beyond it "near" means nothing and the
/// index would walk a large share of the table.
pub const MAX_RADIUS_M: f64 = 50_000.0;

/// A location, checked: finite, lat ∈ [-90, 90], lng ∈ [-180, 180]. `what` names the field or
/// parameter in the message.
pub fn check_location(lat: f64, lng: f64, what: &str) -> Result<Location, String> {
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(format!(
            "{what}: lat must be a number between -90 and 90, got {lat}"
        ));
    }
    if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
        return Err(format!(
            "{what}: lng must be a number between -180 and 180, got {lng}"
        ));
    }
    Ok(Location { lat, lng })
}

/// `near=LAT,LNG`.
pub fn parse_near(raw: &str) -> Result<Location, String> {
    let parts = numbers(raw, 2, "near", "LAT,LNG")?;
    check_location(parts[0], parts[1], "near")
}

/// `radius_m=R`: metres, greater than 0 and at most [`MAX_RADIUS_M`].
pub fn parse_radius(raw: Option<&str>) -> Result<f64, String> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_RADIUS_M);
    };
    match raw.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= MAX_RADIUS_M => Ok(r),
        _ => Err(format!(
            "radius_m must be a number of metres greater than 0 and at most {MAX_RADIUS_M}, got {raw:?}"
        )),
    }
}

/// A `bbox=minLng,minLat,maxLng,maxLat` box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub min_lng: f64,
    pub min_lat: f64,
    pub max_lng: f64,
    pub max_lat: f64,
}

/// `bbox=minLng,minLat,maxLng,maxLat` (the GeoJSON / OGC order). A box across the
/// antimeridian (minLng > maxLng) is refused rather than silently misread.
pub fn parse_bbox(raw: &str) -> Result<BBox, String> {
    let n = numbers(raw, 4, "bbox", "minLng,minLat,maxLng,maxLat")?;
    let min = check_location(n[1], n[0], "bbox")?;
    let max = check_location(n[3], n[2], "bbox")?;
    if min.lat > max.lat || min.lng > max.lng {
        return Err(format!(
            "bbox must be minLng,minLat,maxLng,maxLat with min <= max (boxes across the \
             antimeridian are not supported), got {raw:?}"
        ));
    }
    Ok(BBox {
        min_lng: min.lng,
        min_lat: min.lat,
        max_lng: max.lng,
        max_lat: max.lat,
    })
}

fn numbers(raw: &str, n: usize, name: &str, shape: &str) -> Result<Vec<f64>, String> {
    let bad = || format!("{name} must be {shape} (decimal degrees), got {raw:?}");
    let parts: Vec<f64> = raw
        .split(',')
        .map(|p| p.trim().parse::<f64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if parts.len() != n || parts.iter().any(|v| !v.is_finite()) {
        return Err(bad());
    }
    Ok(parts)
}

/// The great-circle distance in metres (haversine), the reference every distance answer is
/// tested against.
pub fn haversine_m(a: Location, b: Location) -> f64 {
    let (la1, la2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = la2 - la1;
    let dlng = (b.lng - a.lng).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlng / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
}

/// The chord between two points on the sphere that are `metres` apart along it.
pub fn metres_to_chord(metres: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (metres / (2.0 * EARTH_RADIUS_M)).sin()
}

/// The great-circle distance of a chord: the inverse of [`metres_to_chord`].
pub fn chord_to_metres(chord: f64) -> f64 {
    2.0 * EARTH_RADIUS_M * (chord / (2.0 * EARTH_RADIUS_M)).clamp(0.0, 1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show<T: std::fmt::Debug>(r: Result<T, String>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn parsing() {
        let check = |got: String, expect: &str| {
            assert!(got.contains(expect), "expected {expect:?} in {got:?}")
        };
        check(show(parse_near("-6.2,106.8")), "lat: -6.2, lng: 106.8");
        check(show(parse_near(" -6.2 , 106.8 ")), "lat: -6.2");
        check(show(parse_near("-6.2")), "error: near must be LAT,LNG");
        check(
            show(parse_near("-6.2,106.8,1")),
            "error: near must be LAT,LNG",
        );
        check(show(parse_near("x,1")), "error: near must be LAT,LNG");
        check(show(parse_near("NaN,1")), "error: near must be LAT,LNG");
        check(show(parse_near("inf,1")), "error: near must be LAT,LNG");
        check(show(parse_near("91,0")), "error: near: lat must be");
        check(show(parse_near("0,-180.5")), "error: near: lng must be");
        check(show(parse_near("90,180")), "lat: 90.0, lng: 180.0");
        check(show(parse_radius(None)), "1000.0");
        check(show(parse_radius(Some("50000"))), "50000.0");
        check(show(parse_radius(Some("2.5"))), "2.5");
        for bad in ["0", "-1", "50001", "x", "", "NaN", "inf"] {
            check(show(parse_radius(Some(bad))), "error: radius_m must be");
        }
        check(
            show(parse_bbox("106.7,-6.3,106.9,-6.1")),
            "min_lng: 106.7, min_lat: -6.3, max_lng: 106.9, max_lat: -6.1",
        );
        check(show(parse_bbox("106.7,-6.3,106.9")), "error: bbox must be");
        check(show(parse_bbox("106.9,-6.3,106.7,-6.1")), "min <= max");
        check(show(parse_bbox("106.7,-6.1,106.9,-6.3")), "min <= max");
        check(show(parse_bbox("106.7,-96,106.9,-6.1")), "error: bbox: lat");
        check(
            show(check_location(f64::NAN, 0.0, "location")),
            "location: lat",
        );
    }

    #[test]
    fn distances() {
        let at = |lat, lng| Location { lat, lng };
        // Monas to Bundaran HI, Jakarta: about 2.1 km.
        let d = haversine_m(at(-6.175392, 106.827153), at(-6.195, 106.823));
        assert!((2_150.0..2_250.0).contains(&d), "{d}");
        // One degree of latitude is ~111.2 km on this sphere.
        let d = haversine_m(at(0.0, 0.0), at(1.0, 0.0));
        assert!((d - 111_195.0).abs() < 1.0, "{d}");
        for m in [0.0, 1.0, 1_000.0, 50_000.0, 20_000_000.0] {
            assert!((chord_to_metres(metres_to_chord(m)) - m).abs() < 1e-6 * m.max(1.0));
        }
    }
}
