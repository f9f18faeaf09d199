//! SPEC §7.1 on the write side: `location` and `address` on create and update (null clears),
//! stored in the row, carried in every event payload; bad places are 400s naming the field
//! that leave the database untouched.

use std::time::Duration;

use serde_json::json;
use shared::event::Payload;
use shared::model::Location;
use shared::testkit::wait_until;

use super::*;

#[test]
fn location_and_address_round_trip_through_row_and_events() {
    let stack = Stack::new("place");
    let port = stack.svc.port;
    let mut body = new_report(3);
    body["location"] = json!({"lat": -6.175392, "lng": 106.827153});
    body["address"] = json!("  Jl. Medan Merdeka, Jakarta  ");
    let created = post(port, &body);
    assert_eq!(created.status, 201, "{:?}", created.json());
    let data = created.json()["data"].clone();
    let id = data["id"].as_str().expect("id").to_owned();
    assert_eq!(
        data["location"],
        json!({"lat": -6.175392, "lng": 106.827153})
    );
    assert_eq!(data["address"], "Jl. Medan Merdeka, Jakarta");

    // Another field changes: the place is kept.
    let r = put(port, &id, &json!({"status": "in_progress"}), None);
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["data"]["address"], "Jl. Medan Merdeka, Jakarta");
    assert_eq!(r.json()["data"]["location"]["lat"], -6.175392);
    // Moving it, then clearing both.
    let r = put(
        port,
        &id,
        &json!({"location": {"lat": -7.25, "lng": 112.75}}),
        None,
    );
    assert_eq!(
        r.json()["data"]["location"],
        json!({"lat": -7.25, "lng": 112.75})
    );
    let r = put(
        port,
        &id,
        &json!({"location": null, "address": null}),
        Some(3),
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    let data = r.json()["data"].clone();
    assert_eq!(data["version"], 4);
    assert!(
        data.get("location").is_none() && data.get("address").is_none(),
        "{data}"
    );

    let mut db = stack.db();
    let row = db
        .query_one(
            "SELECT lat, lng, address FROM reports WHERE id = $1::text::uuid",
            &[&id],
        )
        .expect("row");
    assert_eq!(
        (
            row.get::<_, Option<f64>>(0),
            row.get::<_, Option<f64>>(1),
            row.get::<_, Option<String>>(2)
        ),
        (None, None, None)
    );

    wait_until("4 events on the stream", Duration::from_secs(10), || {
        stream_events(&stack.redis).len() == 4
    });
    let places: Vec<(Option<Location>, Option<String>)> = stream_events(&stack.redis)
        .iter()
        .map(|e| match e.decode_payload().expect("payload") {
            Payload::Snapshot(r) => (r.location, r.address),
            Payload::Deleted(_) => panic!("no delete was made"),
        })
        .collect();
    let jakarta = Some(Location {
        lat: -6.175392,
        lng: 106.827153,
    });
    let address = Some("Jl. Medan Merdeka, Jakarta".to_owned());
    assert_eq!(
        places,
        vec![
            (jakarta, address.clone()),
            (jakarta, address.clone()),
            (
                Some(Location {
                    lat: -7.25,
                    lng: 112.75
                }),
                address
            ),
            (None, None),
        ]
    );
}

#[test]
fn bad_places_are_400s_naming_the_field() {
    let stack = Stack::new("place_bad");
    let port = stack.svc.port;
    let created = post(port, &new_report(1));
    let id = created.json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = fingerprint(&mut stack.db());
    let cases = [
        (
            json!({"location": {"lat": -6.2}}),
            "location needs both lat and lng",
        ),
        (
            json!({"location": {"lat": 91, "lng": 0}}),
            "location: lat must be",
        ),
        (
            json!({"location": {"lat": 0, "lng": 180.01}}),
            "location: lng must be",
        ),
        (
            json!({"location": {"lat": "1", "lng": 0}}),
            "location.lat must be a number",
        ),
        (json!({"location": "here"}), "location must be an object"),
        (json!({"address": "a".repeat(256)}), "address is too long"),
        (
            json!({"address": "Jl.\u{0}Sudirman"}),
            "address contains a control character",
        ),
        (json!({"address": 12}), "address must be a string"),
    ];
    for (extra, error) in cases {
        let mut create = new_report(2);
        for (k, v) in extra.as_object().expect("object") {
            create[k] = v.clone();
        }
        for r in [post(port, &create), put(port, &id, &extra, None)] {
            assert_eq!(r.status, 400, "{extra}: {:?}", r.json());
            let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
            assert!(
                msg.contains(error),
                "{extra}: expected {error:?} in {msg:?}"
            );
        }
    }
    assert_eq!(
        fingerprint(&mut stack.db()),
        before,
        "a rejected place wrote something"
    );
}
