//! Property tests under a time-boxed mutation fuzzer (`FUZZ_SECONDS` per target; `cargo
//! xtask test` runs 60 s each). Targets: the request validators, the stream-entry decoder,
//! the query-string parser and the Open311 form decoder with its request rules. Property:
//! never a panic, and anything accepted obeys the rules.

use shared::event::{Event, EventType};
use shared::model::{Category, Report, Status, DESCRIPTION_MAX_CHARS, TITLE_MAX_CHARS};
use shared::testkit::fuzz;

fn corpus_json() -> Vec<Vec<u8>> {
    [
        r#"{"title":"Jalan berlubang","description":"Di Jl. Sudirman","category":"infrastruktur"}"#,
        r#"{"status":"in_progress","category":"kesehatan"}"#,
        r#"{"title":"t","description":"d","category":"lainnya","location":{"lat":-6.2,"lng":106.8},"address":"Jl. A"}"#,
        r#"{"location":null,"address":null}"#,
        r#"{"title":"  ","description":null,"category":5}"#,
        r#"[{"title":"x"}]"#,
        r#"{"title":"a\u0000b","description":"\u001b[2J","category":"lainnya"}"#,
        "{}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

#[test]
fn fuzz_validators() {
    let runs = fuzz::run("validators", fuzz::budget(), &corpus_json(), |input| {
        if let Ok(cmd) = command::validate::create(input) {
            assert!(!cmd.title.is_empty() && cmd.title.chars().count() <= TITLE_MAX_CHARS);
            assert!(shared::http::check_text("title", &cmd.title).is_ok());
            assert!(shared::http::check_text("description", &cmd.description).is_ok());
            assert_eq!(cmd.title.trim(), cmd.title);
            assert!(!cmd.description.is_empty());
            assert!(cmd.description.chars().count() <= DESCRIPTION_MAX_CHARS);
            if let Some(l) = cmd.location {
                assert!((-90.0..=90.0).contains(&l.lat) && (-180.0..=180.0).contains(&l.lng));
            }
            if let Some(a) = &cmd.address {
                assert!(!a.is_empty() && a.chars().count() <= 255);
                assert!(!a
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')));
            }
        }
        if let Ok(cmd) = command::validate::update(input) {
            assert!(cmd != command::validate::UpdateReport::default());
            for text in [&cmd.title, &cmd.description].into_iter().flatten() {
                assert!(shared::http::check_text("text", text).is_ok());
            }
        }
        let text = String::from_utf8_lossy(input);
        let _ = command::validate::if_match(Some(&text));
    });
    assert!(runs > 1000, "only {runs} runs");
}

#[test]
fn fuzz_stream_entry_decoder() {
    let now = shared::model::now_micros();
    let id = uuid::Uuid::new_v4();
    let report = Report {
        id,
        title: "Sampah".into(),
        description: "Menumpuk".into(),
        category: Category::Kebersihan,
        status: Status::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        location: None,
        address: None,
        media_url: None,
    };
    let event = Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::ReportCreated,
        report_id: id,
        version: 1,
        position: 1,
        payload: serde_json::to_string(&report).expect("json"),
        timestamp: now,
    };
    let fields = event.to_fields();
    let corpus: Vec<Vec<u8>> = fields.iter().map(|(_, v)| v.as_bytes().to_vec()).collect();
    let mut which = 0usize;
    let runs = fuzz::run("stream entry", fuzz::budget(), &corpus, |mutated| {
        // Replace one field (round robin) with the mutated bytes, sometimes drop one.
        which = (which + 1) % (fields.len() + 1);
        let entry: Vec<(&str, &[u8])> = fields
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != which || which == fields.len())
            .map(|(i, (k, v))| {
                (
                    *k,
                    if i == (which + 3) % fields.len() {
                        mutated
                    } else {
                        v.as_bytes()
                    },
                )
            })
            .collect();
        if let Ok(e) = Event::from_fields(entry) {
            if let Ok(p) = e.decode_payload() {
                assert_eq!(p.id(), e.report_id);
                assert_eq!(p.version(), e.version);
                assert!(e.version >= 1);
            }
        }
    });
    assert!(runs > 1000, "only {runs} runs");
}

#[test]
fn fuzz_query_strings() {
    let corpus: Vec<Vec<u8>> = [
        "page=2&per_page=20",
        "category=kebersihan&status=in_progress",
        "t=a+b%20c",
        "category=a%00b&status=pending%1b",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let runs = fuzz::run("query strings", fuzz::budget(), &corpus, |input| {
        if let Ok(q) = std::str::from_utf8(input) {
            if let Ok(pairs) = shared::http::parse_query(q) {
                assert!(pairs.len() <= q.len() + 1);
            }
            let incoming = shared::http::Incoming {
                method: "GET".into(),
                path: "/reports".into(),
                query: Some(q.to_owned()),
                headers: Vec::new(),
                body: Vec::new(),
            };
            // What a handler can pass on to SQL holds no control character.
            if let Ok(pairs) = incoming.params() {
                for (k, v) in &pairs {
                    assert!(shared::http::check_text("k", k).is_ok());
                    assert!(shared::http::check_text("v", v).is_ok());
                }
            }
        }
    });
    assert!(runs > 1000, "only {runs} runs");
}

#[test]
fn fuzz_open311_form() {
    let corpus: Vec<Vec<u8>> = [
        "service_code=infrastruktur&lat=-6.2&long=106.8&description=Jalan+rusak%0Aparah",
        "service_code=kebersihan&address_string=Jl.+A&media_url=https%3A%2F%2Fx.example%2Fa.jpg",
        "api_key=k&service_code=lainnya&lat=1&long=2&lat=1&email=a%40b&attribute%5Bx%5D=1",
        "service_code=a&service_code=b&lat=nan&long=inf&description=%zz%00%ff",
        "=&&a&%41=%42",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let runs = fuzz::run("open311 form", fuzz::budget(), &corpus, |input| {
        let Ok(form) = shared::open311::Form::parse(input) else {
            return;
        };
        // Nothing that gets through the decoder carries a control character.
        for name in form.names() {
            assert!(shared::http::check_text("name", name).is_ok());
        }
        if let Ok(cmd) = command::open311::request(&form) {
            assert!(!cmd.title.is_empty() && cmd.title.chars().count() <= TITLE_MAX_CHARS);
            assert!(shared::http::check_text("title", &cmd.title).is_ok());
            assert!(shared::http::check_text("description", &cmd.description).is_ok());
            assert!(cmd.description.chars().count() <= DESCRIPTION_MAX_CHARS);
            assert!(cmd.location.is_some() || cmd.address.is_some());
            if let Some(l) = cmd.location {
                assert!((-90.0..=90.0).contains(&l.lat) && (-180.0..=180.0).contains(&l.lng));
            }
            if let Some(u) = &cmd.media_url {
                let lower = u.to_ascii_lowercase();
                assert!(
                    lower.starts_with("http://") || lower.starts_with("https://"),
                    "{u}"
                );
                assert!(u.chars().count() <= shared::model::MEDIA_URL_MAX_CHARS);
            }
        }
    });
    assert!(runs > 1000, "only {runs} runs");
}
