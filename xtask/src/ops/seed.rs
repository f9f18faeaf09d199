//! `cargo xtask seed [N] [--write-url URL] [--token T]`: creates N realistic citizen reports
//! (Indonesian titles and descriptions, every category, located in central Jakarta, Bandung,
//! Surabaya or Yogyakarta with a real street address) through the write endpoint, then moves
//! a share of them through the workflow with PUT (pending → in_progress → resolved, or
//! pending → rejected) so every status appears in lists and statistics.
//!
//! The same generator feeds the creates of `bench`, so benchmarked rows look like real ones
//! (lengths, categories, places), not like `title-1`; `near=` and `q=` after a seed return
//! neighbourhoods and words people would search for.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::http::{Conn, Target};
use crate::rng::Rng;

/// Categories as in `shared::model::Category` (xtask does not link the service crates; a
/// test checks the two lists agree).
pub const CATEGORIES: [&str; 6] = [
    "kebersihan",
    "kriminalitas",
    "infrastruktur",
    "kesehatan",
    "keamanan",
    "lainnya",
];

/// Statuses as in `shared::model::Status`, `pending` first (the initial one).
pub const STATUSES: [&str; 4] = ["pending", "in_progress", "resolved", "rejected"];

/// A city the seeded reports are in: its centre and some of its real kelurahan (urban
/// villages) with their kecamatan (districts), approximate coordinates and real streets.
pub struct City {
    pub name: &'static str,
    /// The city's centre (a landmark), WGS84 degrees.
    pub lat: f64,
    pub lng: f64,
    pub districts: &'static [District],
    pub streets: &'static [&'static str],
}

/// A kelurahan and its kecamatan, with a point near its middle.
pub struct District {
    pub kelurahan: &'static str,
    pub kecamatan: &'static str,
    pub lat: f64,
    pub lng: f64,
}

const fn d(kelurahan: &'static str, kecamatan: &'static str, lat: f64, lng: f64) -> District {
    District {
        kelurahan,
        kecamatan,
        lat,
        lng,
    }
}

/// Four real cities, their central kelurahan and streets (coordinates to a few hundred metres,
/// enough for `near` to find a neighbourhood's reports).
pub const CITIES: [City; 4] = [
    City {
        name: "Jakarta Pusat",
        lat: -6.1754, // Monas
        lng: 106.8272,
        districts: &[
            d("Gambir", "Gambir", -6.1767, 106.8203),
            d("Petojo Utara", "Gambir", -6.1680, 106.8130),
            d("Menteng", "Menteng", -6.1963, 106.8326),
            d("Cikini", "Menteng", -6.1895, 106.8403),
            d("Kebon Sirih", "Menteng", -6.1838, 106.8268),
            d("Senen", "Senen", -6.1758, 106.8429),
        ],
        streets: &[
            "Jl. M.H. Thamrin",
            "Jl. Medan Merdeka Barat",
            "Jl. Kebon Sirih",
            "Jl. Cikini Raya",
            "Jl. Menteng Raya",
            "Jl. Gajah Mada",
            "Jl. Hayam Wuruk",
            "Jl. K.H. Wahid Hasyim",
            "Jl. Kramat Raya",
            "Jl. Abdul Muis",
        ],
    },
    City {
        name: "Bandung",
        lat: -6.9218, // Alun-alun Bandung
        lng: 107.6071,
        districts: &[
            d("Braga", "Sumur Bandung", -6.9175, 107.6096),
            d("Citarum", "Bandung Wetan", -6.9030, 107.6200),
            d("Tamansari", "Bandung Wetan", -6.9020, 107.6080),
            d("Cihapit", "Bandung Wetan", -6.9090, 107.6270),
            d("Balonggede", "Regol", -6.9260, 107.6080),
        ],
        streets: &[
            "Jl. Asia Afrika",
            "Jl. Braga",
            "Jl. Ir. H. Juanda",
            "Jl. Merdeka",
            "Jl. R.E. Martadinata",
            "Jl. Diponegoro",
            "Jl. Cihampelas",
            "Jl. Otto Iskandardinata",
            "Jl. Dalem Kaum",
        ],
    },
    City {
        name: "Surabaya",
        lat: -7.2458, // Tugu Pahlawan
        lng: 112.7378,
        districts: &[
            d("Genteng", "Genteng", -7.2600, 112.7460),
            d("Embong Kaliasin", "Genteng", -7.2660, 112.7420),
            d("Ketabang", "Genteng", -7.2550, 112.7490),
            d("Gubeng", "Gubeng", -7.2720, 112.7500),
            d("Alun-alun Contong", "Bubutan", -7.2470, 112.7340),
            d("Darmo", "Wonokromo", -7.2880, 112.7380),
        ],
        streets: &[
            "Jl. Tunjungan",
            "Jl. Pemuda",
            "Jl. Basuki Rahmat",
            "Jl. Raya Darmo",
            "Jl. Embong Malang",
            "Jl. Gubeng",
            "Jl. Kertajaya",
            "Jl. Pahlawan",
            "Jl. Kramat Gantung",
        ],
    },
    City {
        name: "Yogyakarta",
        lat: -7.7956, // Titik Nol Kilometer
        lng: 110.3653,
        districts: &[
            d("Sosromenduran", "Gedongtengen", -7.7920, 110.3640),
            d("Suryatmajan", "Danurejan", -7.7930, 110.3680),
            d("Kotabaru", "Gondokusuman", -7.7850, 110.3760),
            d("Terban", "Gondokusuman", -7.7760, 110.3740),
            d("Panembahan", "Kraton", -7.8060, 110.3640),
            d("Brontokusuman", "Mergangsan", -7.8180, 110.3720),
        ],
        streets: &[
            "Jl. Malioboro",
            "Jl. Mataram",
            "Jl. Jenderal Sudirman",
            "Jl. Kaliurang",
            "Jl. Parangtritis",
            "Jl. Brigjen Katamso",
            "Jl. Kusumanegara",
            "Jl. Prawirotaman",
            "Jl. Taman Siswa",
        ],
    },
];

/// How far from its kelurahan's point a report is placed: a neighbourhood, so a `near` query
/// around a kelurahan with the default radius finds its reports.
pub const SPREAD_M: f64 = 800.0;

/// Words a `q` search finds in seeded reports (each is in some template or address), for
/// `bench --mix extended`; pairs test the "every word must match" path.
pub const SEARCH_TERMS: &[&str] = &[
    "sampah",
    "jalan berlubang",
    "lampu",
    "selokan",
    "motor",
    "nyamuk",
    "pohon tumbang",
    "trotoar",
    "Malioboro",
    "Braga",
    "Tunjungan",
    "Menteng",
];

/// A point uniformly within `radius_m` of (`lat`, `lng`), on the flat approximation that is
/// exact enough at a few hundred metres.
fn scatter(rng: &mut Rng, lat: f64, lng: f64, radius_m: f64) -> (f64, f64) {
    const METRES_PER_DEGREE: f64 = 111_195.0;
    let unit = |rng: &mut Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let r = radius_m * unit(rng).sqrt();
    let angle = unit(rng) * std::f64::consts::TAU;
    let dlat = r * angle.sin() / METRES_PER_DEGREE;
    let dlng = r * angle.cos() / (METRES_PER_DEGREE * lat.to_radians().cos());
    // Six decimals (~0.1 m) is what a phone's GPS report carries.
    let round = |x: f64| (x * 1e6).round() / 1e6;
    (round(lat + dlat), round(lng + dlng))
}

/// (title, description) templates per category; `{street}`/`{area}` are filled in.
fn templates(category: &str) -> &'static [(&'static str, &'static str)] {
    match category {
        "kebersihan" => &[
            (
                "Sampah menumpuk di {street}",
                "Tumpukan sampah rumah tangga di pinggir {street}, {area}, sudah tiga hari tidak diangkut. Baunya menyengat dan mulai mengundang lalat. Mohon petugas kebersihan segera mengangkutnya.",
            ),
            (
                "Saluran air tersumbat sampah plastik",
                "Selokan di depan rumah warga di {street} tersumbat sampah plastik sehingga air meluap ke jalan setiap kali hujan. Warga {area} meminta pembersihan saluran.",
            ),
            (
                "Pembuangan sampah liar dekat sekolah",
                "Ada lahan kosong di {street} yang dijadikan tempat pembuangan sampah liar, tepat di samping SD negeri. Anak-anak terganggu oleh bau dan asap pembakaran sampah.",
            ),
        ],
        "kriminalitas" => &[
            (
                "Pencurian sepeda motor di parkiran pasar",
                "Dua sepeda motor hilang di area parkir pasar {area} dalam seminggu terakhir. Tidak ada juru parkir resmi dan CCTV tidak berfungsi. Mohon patroli ditingkatkan.",
            ),
            (
                "Aksi jambret di {street} pada malam hari",
                "Beberapa warga menjadi korban penjambretan di {street} sekitar pukul 21.00. Pelaku menggunakan sepeda motor tanpa pelat nomor.",
            ),
            (
                "Pembobolan rumah kosong saat mudik",
                "Rumah warga di {area} dibobol saat ditinggal mudik. Warga meminta peningkatan ronda dan patroli polisi di lingkungan {street}.",
            ),
        ],
        "infrastruktur" => &[
            (
                "Jalan berlubang di {street}",
                "Terdapat lubang besar sedalam kurang lebih 20 cm di {street}, {area}. Sudah beberapa pengendara motor terjatuh, terutama saat malam dan hujan.",
            ),
            (
                "Lampu penerangan jalan mati",
                "Lampu penerangan jalan umum di sepanjang {street} mati sejak dua minggu lalu sehingga jalan gelap gulita dan rawan kecelakaan.",
            ),
            (
                "Jembatan penyeberangan rusak",
                "Beberapa papan lantai jembatan penyeberangan di dekat {area} lepas dan pegangan tangannya berkarat. Sangat berbahaya bagi pejalan kaki.",
            ),
        ],
        "kesehatan" => &[
            (
                "Genangan air berpotensi sarang nyamuk DBD",
                "Genangan air di lahan kosong {street} tidak pernah kering dan banyak jentik nyamuk. Sudah ada dua warga {area} yang terkena demam berdarah bulan ini.",
            ),
            (
                "Puskesmas kekurangan tenaga medis",
                "Antrean di puskesmas {area} sangat panjang karena hanya ada satu dokter yang bertugas. Pasien lansia harus menunggu lebih dari empat jam.",
            ),
            (
                "Limbah rumah makan mencemari sumur warga",
                "Air sumur warga di sekitar {street} berbau dan berwarna keruh, diduga tercemar limbah dari rumah makan di dekatnya. Mohon dilakukan pemeriksaan kualitas air.",
            ),
        ],
        "keamanan" => &[
            (
                "Balap liar setiap malam minggu",
                "Setiap malam minggu terjadi balap liar di {street} hingga dini hari. Suara knalpot bising mengganggu istirahat warga {area} dan membahayakan pengguna jalan.",
            ),
            (
                "Pohon tumbang menghalangi jalan",
                "Pohon besar tumbang di {street} setelah hujan angin dan menutup separuh badan jalan. Kabel listrik ikut tertimpa, mohon segera ditangani.",
            ),
            (
                "Kerumunan remaja mabuk di taman kota",
                "Di taman dekat {area} sering ada kelompok remaja yang mabuk dan membuat keributan pada malam hari. Warga merasa tidak aman melintas.",
            ),
        ],
        _ => &[
            (
                "Pengamen memaksa di lampu merah",
                "Pengamen di persimpangan {street} memaksa pengendara memberi uang dan kadang memukul kaca mobil. Mohon penertiban.",
            ),
            (
                "Kebisingan proyek di luar jam kerja",
                "Proyek pembangunan gedung di {area} bekerja hingga tengah malam dengan suara alat berat yang sangat bising.",
            ),
            (
                "Pedagang kaki lima menutup trotoar",
                "Trotoar di {street} penuh pedagang kaki lima sehingga pejalan kaki terpaksa berjalan di badan jalan.",
            ),
        ],
    }
}

/// One realistic report body (`{title, description, category, location, address}` as JSON)
/// and its category: a city of [`CITIES`], one of its kelurahan, a point within [`SPREAD_M`]
/// of it, one of its streets with a house number.
pub fn report_body(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let category = *rng.pick(&CATEGORIES).unwrap_or(&"lainnya");
    let list = templates(category);
    let (title, description) = *rng
        .pick(list)
        .unwrap_or(&("Laporan warga", "Mohon ditindaklanjuti."));
    let city = rng.pick(&CITIES).unwrap_or(&CITIES[0]);
    let district = rng.pick(city.districts).unwrap_or(&city.districts[0]);
    let street = *rng.pick(city.streets).unwrap_or(&"Jl. Merdeka");
    let area = format!("Kelurahan {}", district.kelurahan);
    let fill = |s: &str| s.replace("{street}", street).replace("{area}", &area);
    let (lat, lng) = scatter(rng, district.lat, district.lng, SPREAD_M);
    let address = format!(
        "{street} No. {}, {}, Kec. {}, {}",
        1 + rng.below(150),
        district.kelurahan,
        district.kecamatan,
        city.name
    );
    let body = serde_json::json!({
        "title": fill(title),
        "description": fill(description),
        "category": category,
        "location": {"lat": lat, "lng": lng},
        "address": address,
    });
    (body.to_string().into_bytes(), category)
}

/// `cargo xtask seed [N] [--write-url URL] [--token T]`.
pub struct Seed {
    pub count: u64,
    pub write_url: Option<String>,
    pub token: Option<String>,
}

impl Seed {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let url = match self.write_url {
            Some(u) => u,
            None => crate::cluster::local::LocalCluster::discover(sh).write_url,
        };
        let token = self.token.or_else(|| std::env::var("XTASK_TOKEN").ok());
        let summary = seed(&url, self.count, token.as_deref())?;
        println!(
            "seeded {} reports through {url} in {:.1} s",
            summary.created,
            summary.elapsed.as_secs_f64()
        );
        let by = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  categories: {}", by(&summary.categories));
        println!("  statuses:   {}", by(&summary.statuses));
        println!("  instances:  {}", by(&summary.instances));
        Ok(())
    }
}

/// What `seed` did.
#[derive(Debug, Default)]
pub struct SeedSummary {
    pub created: u64,
    pub categories: BTreeMap<String, u64>,
    pub statuses: BTreeMap<String, u64>,
    pub instances: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Creates `count` reports, then moves about 30 % to in_progress, 20 % on to resolved and 10 %
/// to rejected. Fails on the first non-2xx answer, naming the request.
pub fn seed(url: &str, count: u64, token: Option<&str>) -> Result<SeedSummary> {
    let started = Instant::now();
    let target = Target::parse(url)?;
    let mut conn = Conn::new(target, Duration::from_secs(30)).with_token(token);
    let mut rng = Rng::from_time(count);
    let mut summary = SeedSummary::default();
    for s in STATUSES {
        summary.statuses.insert(s.to_string(), 0);
    }
    let send = |conn: &mut Conn,
                summary: &mut SeedSummary,
                method: &str,
                path: &str,
                body: &[u8]|
     -> Result<serde_json::Value> {
        let resp = conn
            .request(method, path, Some(body))
            .with_context(|| format!("{method} {url}{path}"))?;
        if let Some(i) = &resp.instance {
            *summary.instances.entry(i.clone()).or_default() += 1;
        }
        if !resp.ok() {
            bail!(
                "{method} {url}{path} answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        serde_json::from_slice(&resp.body)
            .with_context(|| format!("{method} {url}{path}: answer is not JSON"))
    };
    let mut ids = Vec::new();
    for _ in 0..count {
        let (body, category) = report_body(&mut rng);
        let json = send(&mut conn, &mut summary, "POST", "/reports", &body)?;
        let id = json
            .pointer("/data/id")
            .and_then(|v| v.as_str())
            .context("POST /reports: answer has no data.id")?
            .to_string();
        *summary.categories.entry(category.to_string()).or_default() += 1;
        ids.push(id);
        summary.created += 1;
    }
    // Walk the workflow for a share: i % 10 in 0..3 → in_progress, 3..5 → in_progress then
    // resolved, 5 → rejected, the rest stays pending.
    for (i, id) in ids.iter().enumerate() {
        let steps: &[&str] = match i % 10 {
            0..=2 => &["in_progress"],
            3 | 4 => &["in_progress", "resolved"],
            5 => &["rejected"],
            _ => &[],
        };
        for status in steps {
            let body = serde_json::json!({ "status": status }).to_string();
            send(
                &mut conn,
                &mut summary,
                "PUT",
                &format!("/reports/{id}"),
                body.as_bytes(),
            )?;
        }
        let final_status = steps.last().copied().unwrap_or("pending");
        *summary
            .statuses
            .entry(final_status.to_string())
            .or_default() += 1;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_match_the_shared_model() {
        let cats: Vec<_> = shared::model::Category::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(cats, CATEGORIES);
        let statuses: Vec<_> = shared::model::Status::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(statuses, STATUSES);
    }

    /// No seeded report is further than this from its city's centre (the farthest kelurahan
    /// point is ~4.5 km out, plus [`SPREAD_M`]).
    const CITY_RADIUS_M: f64 = 6_000.0;

    /// Every body passes the command service's own validation, is located within
    /// [`CITY_RADIUS_M`] of the centre of the city its address names, and every city,
    /// kelurahan and search term turns up.
    #[test]
    fn bodies_are_located_in_the_cities() {
        use shared::geo::haversine_m;
        use shared::model::Location;

        let mut rng = Rng::new(3);
        let mut kelurahan = std::collections::BTreeSet::new();
        let mut text = String::new();
        for _ in 0..2000 {
            let (body, _) = report_body(&mut rng);
            let Ok(valid) = command::validate::create(&body) else {
                panic!("invalid: {}", String::from_utf8_lossy(&body));
            };
            assert!(valid.location.is_some() && valid.address.is_some());
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let at = Location {
                lat: v["location"]["lat"].as_f64().unwrap(),
                lng: v["location"]["lng"].as_f64().unwrap(),
            };
            let address = v["address"].as_str().unwrap();
            let city = CITIES
                .iter()
                .find(|c| address.ends_with(c.name))
                .unwrap_or_else(|| panic!("no city in {address:?}"));
            let centre = Location {
                lat: city.lat,
                lng: city.lng,
            };
            let from_centre = haversine_m(at, centre);
            assert!(
                from_centre <= CITY_RADIUS_M,
                "{address}: {at:?} is {from_centre:.0} m from {}",
                city.name
            );
            let district = city
                .districts
                .iter()
                .find(|d| address.contains(&format!(", {}, Kec. {},", d.kelurahan, d.kecamatan)))
                .unwrap_or_else(|| panic!("no kelurahan of {} in {address:?}", city.name));
            let from_district = haversine_m(
                at,
                Location {
                    lat: district.lat,
                    lng: district.lng,
                },
            );
            // The flat scatter is exact to well under 1 % at these distances.
            assert!(
                from_district <= SPREAD_M * 1.01,
                "{address}: {from_district:.0} m"
            );
            assert!(
                city.streets.iter().any(|s| address.starts_with(s)),
                "{address}"
            );
            kelurahan.insert(district.kelurahan);
            text.push_str(&format!(
                "{} {} {address}\n",
                v["title"].as_str().unwrap(),
                v["description"].as_str().unwrap()
            ));
        }
        let all: usize = CITIES.iter().map(|c| c.districts.len()).sum();
        assert_eq!(kelurahan.len(), all, "every kelurahan is used");
        let text = text.to_lowercase();
        for term in SEARCH_TERMS {
            for word in term.split_whitespace() {
                assert!(text.contains(&word.to_lowercase()), "{word} never seeded");
            }
        }
    }

    #[test]
    fn bodies_are_valid_and_cover_every_category() {
        let mut rng = Rng::new(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let (body, category) = report_body(&mut rng);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["category"], category);
            let title = v["title"].as_str().unwrap();
            assert!(
                !title.contains('{') && title.chars().count() <= 255,
                "{title}"
            );
            assert!(!v["description"].as_str().unwrap().contains('{'));
            seen.insert(category);
        }
        assert_eq!(seen.len(), CATEGORIES.len());
    }
}
