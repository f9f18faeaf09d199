//! `cargo xtask seed [N] [--write-url URL] [--token T]`: creates N realistic citizen reports
//! (Indonesian titles and descriptions, every category) through the write endpoint, then moves
//! a share of them through the workflow with PUT (pending → in_progress → resolved, or
//! pending → rejected) so every status appears in lists and statistics.
//!
//! The same generator feeds the creates of `bench`, so benchmarked rows look like real ones
//! (lengths, categories), not like `title-1`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lexopt::prelude::*;
use xshell::Shell;

use crate::bench::client::{Conn, Target};
use crate::bench::schedule::Rng;

/// Reports created when `seed` is given no N.
pub const DEFAULT_COUNT: u64 = 100;

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

const STREETS: &[&str] = &[
    "Jl. Sudirman",
    "Jl. Merdeka",
    "Jl. Diponegoro",
    "Jl. Gatot Subroto",
    "Jl. Ahmad Yani",
    "Jl. Pahlawan",
    "Jl. Veteran",
    "Jl. Imam Bonjol",
    "Jl. Kartini",
    "Jl. Hayam Wuruk",
];

const AREAS: &[&str] = &[
    "Kelurahan Menteng",
    "Kelurahan Tebet Barat",
    "Kelurahan Cempaka Putih",
    "Kelurahan Sukajadi",
    "Kelurahan Lowokwaru",
    "Kelurahan Gubeng",
    "Kelurahan Banyumanik",
    "Kelurahan Kebayoran Lama",
];

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

/// One realistic report body (`{title, description, category}` as JSON) and its category.
pub fn report_body(rng: &mut Rng) -> (Vec<u8>, &'static str) {
    let category = *rng.pick(&CATEGORIES).unwrap_or(&"lainnya");
    let list = templates(category);
    let (title, description) = *rng
        .pick(list)
        .unwrap_or(&("Laporan warga", "Mohon ditindaklanjuti."));
    let street = *rng.pick(STREETS).unwrap_or(&"Jl. Merdeka");
    let area = *rng.pick(AREAS).unwrap_or(&"Kelurahan Menteng");
    let fill = |s: &str| s.replace("{street}", street).replace("{area}", area);
    let body = serde_json::json!({
        "title": fill(title),
        "description": fill(description),
        "category": category,
    });
    (body.to_string().into_bytes(), category)
}

pub struct Seed {
    pub count: u64,
    pub write_url: Option<String>,
    pub token: Option<String>,
}

impl Seed {
    /// Flags after `seed`: `[N] [--write-url URL] [--token T]`.
    pub fn parse(p: &mut lexopt::Parser) -> Result<Seed> {
        let mut seed = Seed {
            count: DEFAULT_COUNT,
            write_url: None,
            token: None,
        };
        let mut got_count = false;
        while let Some(arg) = p.next()? {
            match arg {
                Value(v) if !got_count => {
                    let raw = v.string()?;
                    seed.count = raw
                        .parse()
                        .with_context(|| format!("seed: N must be a number, got `{raw}`"))?;
                    got_count = true;
                }
                Long("write-url") => seed.write_url = Some(p.value()?.string()?),
                Long("token") => seed.token = Some(p.value()?.string()?),
                _ => bail!("{}", arg.unexpected()),
            }
        }
        Ok(seed)
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        let url = match self.write_url {
            Some(u) => u,
            None => crate::bench::LocalCluster::discover(sh).write_url,
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
