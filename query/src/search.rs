//! `GET /reports` with everything SPEC §2 and §7.1 allow: `category`, `status`, `q=` (full
//! text), `near=`+`radius_m=` (nearest first, `distance_m` per item) or `bbox=`, paged by
//! `page=N` or by `cursor=` (keyset). [`ListQuery::parse`] is pure and tested in-module;
//! [`list`] builds one statement per request from the same few fragments, so every shape is a
//! conjunction over one of the read model's indexes (`sql/query.sql`).
//!
//! Guarantees:
//! - every answer says how to go on: `next` is the key of the last item served whenever more
//!   items match, and a cursor page starts strictly after it (no item twice, none skipped);
//! - nearest-first pages come from the GiST KNN scan (`<->`), which orders by distance only;
//!   reports at exactly the same distance (the same spot reported twice) are ordered by id
//!   here, and a page boundary inside such a group reads the whole group, so ties never break
//!   the keyset;
//! - the page and its total are read in one statement (one snapshot); totals of plain filters
//!   come from the exact `statistics` table, those of text/place filters are counted up to
//!   [`TOTAL_CAP`] (`capped` says when the real number is larger);
//! - every shape reads an index and no more rows than its answer needs, however wrong the
//!   planner's guess of a filter's frequency: `near` counts and pages along the KNN scan,
//!   `q`/`bbox` walk a bounded prefix of the newest-first index before asking for older
//!   matches ([`walked`]), and `q` with a place whose matches turn out rare reads them from
//!   one GIN scan of its words and place cells ([`walked`], [`near_probe`], `cells`); the
//!   scale bench measures each shape at a million reports.

use postgres::types::{ToSql, Type};
use postgres::GenericClient;
use shared::geo::{self, BBox};
use shared::http::ApiError;
use shared::model::Location;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cells;
use crate::cursor::Cursor;
use crate::paging::{single, Filter, ListParams};

/// Longest `q` accepted (SPEC §7.1): a search phrase, not a document; it bounds the work of
/// one full-text query.
pub const Q_MAX_CHARS: usize = 200;
/// Text and place filters count their matches up to this many (`meta.total` exact up to it,
/// then `total_capped`): counting costs a row visit per match, so an exact count of a broad
/// search at a million reports would cost far more than the page; 100 keeps every counted
/// total within a few milliseconds there (README "At a million reports"), and `next_cursor`
/// still says whether more follow.
pub const TOTAL_CAP: i64 = 100;

/// A validated list request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// `page=N` (1 when neither `page` nor `cursor` is given); `None` with a cursor.
    pub page: Option<i64>,
    pub per_page: i64,
    pub filter: Filter,
    /// The words of `q=`, trimmed; `None` when absent or blank.
    pub q: Option<String>,
    /// `near=` and its radius in metres.
    pub near: Option<(Location, f64)>,
    pub bbox: Option<BBox>,
    pub cursor: Option<Cursor>,
}

impl ListQuery {
    pub fn parse(params: &[(String, String)]) -> Result<ListQuery, ApiError> {
        let base = ListParams::parse(params)?;
        let bad = ApiError::BadRequest;
        let q = match single(params, "q")? {
            Some(raw) => {
                let n = raw.chars().count();
                if n > Q_MAX_CHARS {
                    return Err(bad(format!(
                        "q is too long: {n} characters, the limit is {Q_MAX_CHARS}"
                    )));
                }
                if raw.chars().any(char::is_control) {
                    return Err(bad("q contains a control character".into()));
                }
                Some(raw.trim().to_owned()).filter(|t| !t.is_empty())
            }
            None => None,
        };
        let radius = single(params, "radius_m")?;
        let near = match single(params, "near")? {
            Some(raw) => Some((
                geo::parse_near(raw).map_err(bad)?,
                geo::parse_radius(radius).map_err(bad)?,
            )),
            None if radius.is_some() => {
                return Err(bad("radius_m needs near=LAT,LNG".into()));
            }
            None => None,
        };
        let bbox = single(params, "bbox")?
            .map(|raw| geo::parse_bbox(raw).map_err(bad))
            .transpose()?;
        if near.is_some() && bbox.is_some() {
            return Err(bad(
                "near and bbox cannot be combined: give one of them".into()
            ));
        }
        let cursor = single(params, "cursor")?.map(Cursor::decode).transpose()?;
        if let Some(c) = &cursor {
            if single(params, "page")?.is_some() {
                return Err(bad(
                    "cursor and page cannot be combined: a cursor already says where to go on"
                        .into(),
                ));
            }
            if matches!(c, Cursor::Near { .. }) != near.is_some() {
                return Err(bad(
                    "cursor does not belong to this query: repeat the filters of the request \
                     that returned it"
                        .into(),
                ));
            }
        }
        Ok(ListQuery {
            page: cursor.is_none().then_some(base.page),
            per_page: base.per_page,
            filter: base.filter,
            q,
            near,
            bbox,
            cursor,
        })
    }

    /// Whether the total must be counted rather than read from `statistics`.
    fn counted(&self) -> bool {
        self.q.is_some() || self.near.is_some() || self.bbox.is_some()
    }
}

/// One listed page: the items were appended to the output, comma-separated.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub total: i64,
    /// The total is [`TOTAL_CAP`] and more match.
    pub capped: bool,
    pub next: Option<Cursor>,
}

/// One row of a page.
struct Item {
    doc: String,
    created_at: OffsetDateTime,
    id: Uuid,
    chord: Option<f64>,
}

/// Parameters of a statement being built, with their types (sent with `query_typed`).
#[derive(Default)]
struct Args {
    values: Vec<(Box<dyn ToSql + Sync>, Type)>,
}

impl Args {
    /// Adds a parameter and returns its placeholder.
    fn add<T: ToSql + Sync + 'static>(&mut self, v: T, ty: Type) -> String {
        self.values.push((Box::new(v), ty));
        format!("${}", self.values.len())
    }

    fn refs(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.values
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
}

/// The distance expression of a `near=` query, as the GiST index `read_reports_near` orders.
fn chord_expr(center: (&str, &str)) -> String {
    format!(
        "(report_earth_point(lat, lng) <-> report_earth_point({}, {}))",
        center.0, center.1
    )
}

/// What a statement's rows must meet.
struct Conditions {
    /// Every row of the answer meets all of them (without the cursor); the first is
    /// `deleted_at IS NULL`.
    all: Vec<String>,
    /// The distance expression when the order is nearest first.
    chord: Option<String>,
    /// `q=` with a `bbox=`: the same rows as `all`, as a condition on the words and place
    /// cells of `read_reports_search_place` (its exact box as plain ranges, which no other
    /// index takes and whose share the planner reads from the columns' statistics).
    words_in_place: Option<String>,
    /// `q=` with a `near=`: the same rows as `all`, as a condition on the words and the cells
    /// of the radius's box (then the radius itself), for [`NearSource::Index`].
    words_in_circle: Option<String>,
    /// `q=` with a `near=`: `all` without the words, for [`near_probe`].
    near_without_words: Option<String>,
    /// The words' condition.
    words: Option<String>,
}

/// The conditions of a request (see [`Conditions`]).
fn conditions(q: &ListQuery, args: &mut Args) -> Conditions {
    let mut conds = vec!["deleted_at IS NULL".to_owned()];
    if let Some(c) = q.filter.category {
        conds.push(format!("category = {}", args.add(c.as_str(), Type::TEXT)));
    }
    if let Some(s) = q.filter.status {
        conds.push(format!("status = {}", args.add(s.as_str(), Type::TEXT)));
    }
    let mut words = None;
    if let Some(text) = &q.q {
        let p = args.add(text.clone(), Type::TEXT);
        let cond = format!("search @@ plainto_tsquery('simple'::regconfig, report_unaccent({p}))");
        conds.push(cond.clone());
        words = Some(cond);
    }
    let mut words_in_place = None;
    if let Some(b) = q.bbox {
        let k = corners(&b, args);
        let cells = q.q.as_ref().and_then(|_| in_cells(&b, args));
        if q.q.is_some() && cells.is_none() {
            // Most of a hemisphere: no cover, and the box barely narrows the words. As plain
            // ranges the box is no index condition, so the planner's fallback reads the words'
            // own index or walks on, as for `q=` alone, never a bitmap scan of the box.
            conds.push(ranges(&k));
        } else {
            if let Some(cells) = cells {
                let mut place = conds[1..].to_vec();
                place.push(cells);
                place.push(ranges(&k));
                words_in_place = Some(place.join(" AND "));
            }
            let [a, bb, c, d] = &k;
            conds.push(format!(
                "lat IS NOT NULL AND point(lng, lat) <@ box(point({a}, {bb}), point({c}, {d}))"
            ));
        }
    }
    let mut chord = None;
    let (mut words_in_circle, mut near_without_words) = (None, None);
    if let Some((at, radius)) = q.near {
        let lat = args.add(at.lat, Type::FLOAT8);
        let lng = args.add(at.lng, Type::FLOAT8);
        let r = args.add(geo::metres_to_chord(radius), Type::FLOAT8);
        let expr = chord_expr((&lat, &lng));
        if q.q.is_some() {
            let mut circle = conds[1..].to_vec();
            if let Some(b) = cells::around(at, radius) {
                circle.extend(in_cells(&b, args));
                circle.push(ranges(&corners(&b, args)));
            }
            circle.push(format!("lat IS NOT NULL AND {expr} <= {r}"));
            words_in_circle = Some(circle.join(" AND "));
        }
        conds.push(format!(
            "lat IS NOT NULL AND report_earth_point(lat, lng) <@ \
             cube_enlarge(report_earth_point({lat}, {lng}), {r}, 3) AND {expr} <= {r}"
        ));
        if let Some(w) = &words {
            near_without_words = Some(
                conds
                    .iter()
                    .filter(|c| *c != w)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" AND "),
            );
        }
        chord = Some(expr);
    }
    Conditions {
        all: conds,
        chord,
        words_in_place,
        words_in_circle,
        near_without_words,
        words,
    }
}

/// Placeholders of a box's corners: min lng, min lat, max lng, max lat.
fn corners(b: &BBox, args: &mut Args) -> [String; 4] {
    [b.min_lng, b.min_lat, b.max_lng, b.max_lat].map(|v| args.add(v, Type::FLOAT8))
}

/// The box of `corners` as plain ranges: inclusive on every side, as `<@` is; no index takes
/// them, and the planner reads their share from the columns' statistics.
fn ranges([a, b, c, d]: &[String; 4]) -> String {
    format!("lng >= {a} AND lng <= {c} AND lat >= {b} AND lat <= {d}")
}

/// `report_cells(lat, lng) && $cells` for the box's cover (`read_reports_search_place`), or
/// `None` when it has none.
fn in_cells(b: &BBox, args: &mut Args) -> Option<String> {
    cells::cover(b).map(|cover| {
        let cells = args.add(cover, Type::INT8_ARRAY);
        format!("report_cells(lat, lng) && {cells}")
    })
}

/// The statement of one page, as [`list`] sends it (also what the EXPLAIN tests check).
pub struct Statement {
    pub sql: String,
    args: Args,
    /// The conditions of the page, cursor included.
    conds: Vec<String>,
    /// The distance expression of a nearest-first page.
    chord: Option<String>,
    /// The page comes from the KNN scan (distance order only; ties fixed up in [`list`]).
    knn: bool,
}

impl Statement {
    /// The parameters, typed, for `query_typed`.
    pub fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.args.refs()
    }

    pub fn build(q: &ListQuery) -> Statement {
        Statement::build_from(q, NearSource::Knn)
    }

    /// The statement of one page, its `near=` + `q=` matches found as `source` says (what
    /// [`near_probe`] chose; [`NearSource::Knn`] for every other shape).
    pub fn build_from(q: &ListQuery, source: NearSource) -> Statement {
        let mut args = Args::default();
        let Conditions {
            all: mut conds,
            chord,
            words_in_place,
            words_in_circle,
            ..
        } = conditions(q, &mut args);
        let gin = words_in_place.as_deref();
        let base = conds.join(" AND ");
        // What a row must match besides being live (`conds[0]` is `deleted_at IS NULL`).
        let matches = conds[1..].join(" AND ");
        let newest = q.counted() && chord.is_none();
        let mut ctes = Vec::new();
        // Where the nearest-first reads take their rows: the table through its KNN index, or
        // every match of rare words in the radius, read once from the full-text index.
        let src = match (source, &words_in_circle) {
            (NearSource::Index, Some(circle)) => {
                ctes.push(format!(
                    "{NEAR_MATCHES} AS MATERIALIZED (SELECT * FROM read_reports \
                     WHERE deleted_at IS NULL AND {circle})"
                ));
                NEAR_MATCHES
            }
            _ => "read_reports",
        };
        // The planner prices a box at a constant 0.1 % of the table (`contsel`), however many
        // reports it holds, so a box alone walks further before it is asked.
        let walk_rows = if q.q.is_none() {
            BOX_WALK_ROWS
        } else {
            WALK_ROWS
        };
        // A small box without words is first counted in its own index, up to a bound: a box
        // that holds few reports is answered from them alone (see [`BOX_SORT_ROWS`]).
        let boxed = q.q.is_none() && q.bbox.is_some_and(|b| area_m2(&b) <= BOX_PROBE_MAX_M2);
        if boxed {
            ctes.push(format!(
                "{BOX_PROBE} AS MATERIALIZED (SELECT created_at, id FROM read_reports \
                 WHERE {base} LIMIT {})",
                BOX_SORT_ROWS + 1
            ));
        }
        let walk = Walk {
            rows: walk_rows,
            matches: &matches,
            boxed,
            gin,
        };
        let total_sql = if newest {
            let n = args.add(TOTAL_CAP + 1, Type::INT8);
            ctes.push(walked("t", None, "", &n, &walk));
            "SELECT count(*)::int8 FROM t_keys".to_owned()
        } else if let Some(expr) = &chord {
            // Never an unordered count (for a place in a dense city the planner would take a
            // table scan that stops at the cap) and never in newest-first order (that walks
            // the whole newest-first index when fewer than the cap match): counted along the
            // GiST KNN scan, whatever the planner guesses of the radius, which it cannot.
            ctes.push(format!(
                "t_near AS MATERIALIZED (SELECT id, {expr} AS chord FROM {src} \
                 WHERE {base} ORDER BY {expr} LIMIT {})",
                TOTAL_CAP + 1
            ));
            "SELECT count(*)::int8 FROM t_near".to_owned()
        } else {
            let mut stats = Vec::new();
            if let Some(c) = q.filter.category {
                stats.push(format!("category = {}", args.add(c.as_str(), Type::TEXT)));
            }
            if let Some(s) = q.filter.status {
                stats.push(format!("status = {}", args.add(s.as_str(), Type::TEXT)));
            }
            let filter = if stats.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", stats.join(" AND "))
            };
            format!("SELECT COALESCE(sum(count), 0)::int8 FROM statistics{filter}")
        };
        let mut after = String::new();
        match (&q.cursor, &chord) {
            (Some(Cursor::Newest { created_at, id }), _) => {
                let t = args.add(*created_at, Type::TIMESTAMPTZ);
                let i = args.add(*id, Type::UUID);
                after = format!(" AND (created_at, id) < ({t}, {i})");
                conds.push(format!("(created_at, id) < ({t}, {i})"));
            }
            (Some(Cursor::Near { chord: c, id }), Some(expr)) => {
                let c = args.add(*c, Type::FLOAT8);
                let i = args.add(*id, Type::UUID);
                conds.push(format!(
                    "{expr} >= {c} AND NOT ({expr} = {c} AND id <= {i})"
                ));
            }
            _ => {}
        }
        let per_page = q.per_page;
        let offset = (q.page.unwrap_or(1) - 1).saturating_mul(per_page);
        // One row more than the page tells whether another page follows.
        let limit = args.add(per_page + 1, Type::INT8);
        let off = args.add(offset, Type::INT8);
        let need = args.add(offset.saturating_add(per_page + 1), Type::INT8);
        let all = conds.join(" AND ");
        // The first page and cursor pages of a nearest-first list use the KNN scan, which
        // orders by distance alone (ties fixed up in [`list`]).
        let knn = chord.is_some() && offset == 0;
        let page_sql = match &chord {
            // The first page lies within the total's KNN prefix: read from it, the radius is
            // scanned once (all of it when few of its reports match a filter).
            Some(_) if knn && q.cursor.is_none() && per_page < TOTAL_CAP + 1 => format!(
                "page AS (SELECT r.doc, r.created_at, r.id, n.chord FROM (SELECT id, chord \
                 FROM t_near ORDER BY chord LIMIT {limit}) n \
                 JOIN read_reports r ON r.id = n.id)"
            ),
            Some(expr) if knn => format!(
                "page AS (SELECT doc, created_at, id, {expr} AS chord FROM {src} \
                 WHERE {all} ORDER BY {expr} LIMIT {limit} OFFSET {off})"
            ),
            Some(expr) => {
                // Page N > 1 must order by (distance, id) to be exact under ties, an order no
                // index gives: the KNN scan finds how far the first `need` reach, and only the
                // reports within that distance (a box of it is the index condition) are sorted.
                let reach = near_box(&conds, expr, "(SELECT max(chord) FROM reach)");
                format!(
                    "reach AS MATERIALIZED (SELECT {expr} AS chord FROM {src} \
                     WHERE {all} ORDER BY {expr} LIMIT {need}), \
                     page AS (SELECT doc, created_at, id, {expr} AS chord FROM {src} \
                     WHERE {all} AND {reach} ORDER BY {expr}, id LIMIT {limit} OFFSET {off})"
                )
            }
            None if newest => {
                // Without a cursor the total's keys are the first TOTAL_CAP + 1 matches: a
                // page within them is read from them, deeper ones walk the same rows again.
                let keys = if after.is_empty() && offset + per_page < TOTAL_CAP + 1 {
                    "t_keys"
                } else {
                    let shared = after.is_empty().then_some("t_walk");
                    ctes.push(walked("p", shared, &after, &need, &walk));
                    "p_keys"
                };
                "page AS (SELECT r.doc, r.created_at, r.id, NULL::float8 AS chord \
                 FROM (SELECT id FROM {keys} ORDER BY created_at DESC, id DESC \
                 LIMIT {limit} OFFSET {off}) k JOIN read_reports r ON r.id = k.id)"
                    .replace("{keys}", keys)
                    .replace("{limit}", &limit)
                    .replace("{off}", &off)
            }
            // A deep numbered page skips whole buckets of `list_counts` (sql/query.sql): the
            // bucket the offset falls in is found by summing its filter's counts newest first,
            // and the index range scan starts at that bucket's upper bound, skipping less than
            // one bucket. Same snapshot as the rows (one statement), so the same answer as
            // OFFSET over the whole index. Past the end there is no such bucket and no row.
            // The skipped keys are read from the index alone (an index-only scan where the
            // pages are all-visible, as older reports' are); only the page's rows are fetched.
            None if offset > 0 => {
                let c = args.add(q.filter.category.map_or("", |c| c.as_str()), Type::TEXT);
                let s = args.add(q.filter.status.map_or("", |s| s.as_str()), Type::TEXT);
                format!(
                    "rank AS MATERIALIZED (SELECT hi, ({off} - (upto - count))::int8 AS skip \
                     FROM (SELECT count, sum(count) OVER w AS upto, lag(bucket) OVER w AS hi \
                     FROM list_counts WHERE category = {c} AND status = {s} \
                     WINDOW w AS (ORDER BY bucket DESC ROWS UNBOUNDED PRECEDING)) b \
                     WHERE upto > {off} LIMIT 1), \
                     page AS (SELECT r.doc, r.created_at, r.id, NULL::float8 AS chord \
                     FROM (SELECT id FROM read_reports WHERE {all} \
                     AND created_at < (SELECT COALESCE(hi, 'infinity') FROM rank) \
                     ORDER BY created_at DESC, id DESC LIMIT {limit} \
                     OFFSET (SELECT skip FROM rank)) k JOIN read_reports r ON r.id = k.id)"
                )
            }
            None => format!(
                "page AS (SELECT doc, created_at, id, NULL::float8 AS chord FROM read_reports \
                 WHERE {all} ORDER BY created_at DESC, id DESC LIMIT {limit} OFFSET {off})"
            ),
        };
        ctes.push(page_sql);
        let sql = format!(
            "WITH {} \
             SELECT t.total, page.doc, page.created_at, page.id, page.chord \
             FROM ({total_sql}) AS t(total) LEFT JOIN page ON true",
            ctes.join(", ")
        );
        Statement {
            sql,
            args,
            conds,
            chord,
            knn,
        }
    }
}

/// Where a `near=` with `q=` reads its matches from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NearSource {
    /// The KNN scan of the table, nearest first, testing the words on each report: cheap
    /// while the words are common among the nearest reports.
    Knn,
    /// Every match in the radius from `read_reports_search_place` (the words and the cells
    /// of the radius's box in one GIN scan), then sorted: cheap while they are few, where the
    /// KNN scan would read the whole radius (a rare word within 50 km: 0.3–0.4 s).
    Index,
}

/// The CTE of [`NearSource::Index`].
const NEAR_MATCHES: &str = "n_matches";

/// Reports of the radius, nearest first, whose words [`near_probe`] tests: ~2 ms of KNN scan
/// at a million reports, paid only where the words turn out rare.
pub const NEAR_PROBE_ROWS: i64 = 400;
/// Matches among the [`NEAR_PROBE_ROWS`] nearest that keep [`NearSource::Knn`]. The KNN
/// scan pays ~5 µs per report it reads at a million reports, the index ~4 µs per match and
/// twice the matches (the cells stick out of the circle's box), so for a share `d` of
/// matches in the largest radius (50 km around a city centre: ~250 000 reports) the two cost
/// the same where `101 / d · 5 µs = d · 250 000 · 2 · 4 µs`: d ≈ 1.6 %, 6 in 400. A smaller
/// radius holds fewer reports than that, and the KNN scan never reads more than all of it.
pub const NEAR_DENSE_HITS: i64 = 6;

/// For `near=` with `q=`: a statement whose one boolean row says whether the words are rare
/// among the nearest reports ([`NearSource::Index`] then), or `None` for any other shape.
/// It reads the KNN scan lazily: common words stop it after [`NEAR_DENSE_HITS`] matches, and
/// a radius of fewer than [`NEAR_PROBE_ROWS`] reports is read whole by either source.
/// Separate from the page's statement because no one statement can choose an index by
/// what another part of it found; the choice only changes the cost, never the answer.
pub fn near_probe(q: &ListQuery) -> Option<Probe> {
    let mut args = Args::default();
    let c = conditions(q, &mut args);
    let (base, words, expr) = (c.near_without_words?, c.words?, c.chord?);
    let sql = format!(
        "WITH p AS MATERIALIZED (SELECT ({words}) AS hit FROM read_reports WHERE {base} \
         ORDER BY {expr} LIMIT {NEAR_PROBE_ROWS}) \
         SELECT CASE WHEN (SELECT count(*) FROM (SELECT 1 FROM p WHERE hit \
         LIMIT {NEAR_DENSE_HITS}) h) >= {NEAR_DENSE_HITS} THEN false \
         ELSE (SELECT count(*) FROM p) >= {NEAR_PROBE_ROWS} END"
    );
    Some(Probe { sql, args })
}

/// The statement of [`near_probe`].
pub struct Probe {
    pub sql: String,
    args: Args,
}

impl Probe {
    /// The parameters, typed, for `query_typed`.
    pub fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.args.refs()
    }

    /// Runs the probe: the source the page's statement should read.
    pub fn choose(&self, client: &mut impl GenericClient) -> Result<NearSource, postgres::Error> {
        let row = client.query_typed(&self.sql, &self.params())?;
        Ok(
            match row.first().map(|r| r.try_get::<_, bool>(0)).transpose()? {
                Some(true) => NearSource::Index,
                _ => NearSource::Knn,
            },
        )
    }
}

/// The condition that a report lies within `bound` (a chord) of the `near=` centre, as an
/// index condition of `read_reports_near`: the near condition of `conds` with its radius
/// replaced.
fn near_box(conds: &[String], expr: &str, bound: &str) -> String {
    // `expr` is `(report_earth_point(lat, lng) <-> report_earth_point($a, $b))`.
    let centre = expr
        .strip_prefix("(report_earth_point(lat, lng) <-> ")
        .and_then(|e| e.strip_suffix(')'))
        .unwrap_or(expr);
    debug_assert!(conds.iter().any(|c| c.contains(centre)));
    format!("report_earth_point(lat, lng) <@ cube_enlarge({centre}, {bound}, 3)")
}

/// Rows newest first walked before the selective index is asked: enough that a match in one
/// report of [`WALK_ROWS`] / 21 fills a page, and a match in one of 40 settles the capped
/// total, yet short (a millisecond or two at a million reports).
pub const WALK_ROWS: i64 = 4_000;
/// Hits among the [`WALK_ROWS`] walked that make `q=` with a `bbox=` walk on rather than
/// read all its matches from the index (see [`walked`]). A walked row costs ~0.5 µs at a
/// million reports, a match read from the index ~1.7 µs and about twice the matches (the
/// cells' overhang), so the two cost the same where `need / d · 0.5 µs = d · N · 3.4 µs` for a
/// share `d` of matches: d ≈ 0.4 %, 16 hits in 4 000. Measured over boxes of 1–20 km² of
/// central Jakarta (`sampah`, 20 % of the reports): 14, 20, 25 and 40 cost at most 14, 10.5,
/// 19 and 37 ms at their worst box (README "At a million reports"). Below, the matches are
/// few enough to read them all; above, the walk ends soon.
pub const DENSE_HITS: i64 = 20;
/// Rows the walk of `q=` with a `bbox=` goes on through when its first [`WALK_ROWS`] held
/// [`DENSE_HITS`] or more: at that density the page is found within ~16 000 rows; the bound
/// is for matches that grow rarer with age (then the index reads the older ones).
pub const MORE_ROWS: i64 = 40_000;
/// [`WALK_ROWS`] for a `bbox=` without `q=`: the planner's guess of a box is a constant, so the
/// walk, cheap per row for a box test, settles down to a match in one report of 100.
pub const BOX_WALK_ROWS: i64 = 10_000;

/// Reports a `bbox=` without `q=` may hold (with its `category`/`status`, before any cursor)
/// and still be answered from the box's own index, newest first by a sort of them all.
///
/// The planner cannot know how many reports a box holds (it prices every box at 0.1 % of the
/// table), and both orders are slow for one of the kinds: the newest-first walk with a box
/// test reads a heap row per report walked, which for a small box in a quiet place (1 km²,
/// 0.25 % of a million reports) is the whole [`BOX_WALK_ROWS`] and then a bitmap scan of its
/// ~2 500 reports, 11 ms; sorting the box is hopeless for a city (60 000 reports in 30 km²).
/// So a small box ([`BOX_PROBE_MAX_M2`]) is counted in `read_reports_box` up to this bound
/// first: an index-only scan (the keys and the sort columns are in that index; no table rows
/// are read), and its rows are the answer when the box holds no more. 5 000 keeps that
/// count and the sort of its rows within a few milliseconds at a million reports (the 1 km²
/// box: 2.6 ms), and stays above what 1–2 km² hold in the densest city centre of the bench.
pub const BOX_SORT_ROWS: i64 = 5_000;
/// Largest box (in m² of the Earth's surface) counted first ([`BOX_SORT_ROWS`]). The count
/// costs about a microsecond per report, as much as the newest-first walk pays for ten, so
/// a box that holds more than the bound pays the count for nothing before its walk (a
/// city-sized box with a status: twice as slow). Boxes are that large only where the
/// walk settles them: the densest part of the bench's cities holds ~2 000 reports per km²
/// at a million reports, so a box of at most 2 km² holds fewer than the bound there, and a
/// larger one is walked as before, its count never made.
pub const BOX_PROBE_MAX_M2: f64 = 2_000_000.0;

/// The surface of a `bbox=` on the sphere of [`geo::EARTH_RADIUS_M`], in m²: R² · Δλ ·
/// (sin φ₂ − sin φ₁), exact for a box bounded by meridians and parallels.
fn area_m2(b: &BBox) -> f64 {
    let r = geo::EARTH_RADIUS_M;
    r * r
        * (b.max_lng - b.min_lng).to_radians()
        * (b.max_lat.to_radians().sin() - b.min_lat.to_radians().sin())
}

/// The CTE of the box count ([`BOX_SORT_ROWS`]).
const BOX_PROBE: &str = "b_box";

/// What the walks of one statement share (its total's and its page's, see [`walked`]).
#[derive(Clone, Copy)]
struct Walk<'a> {
    /// Rows of the newest-first index walked first.
    rows: i64,
    /// What a row must match besides being live.
    matches: &'a str,
    /// The box was counted in [`BOX_PROBE`].
    boxed: bool,
    /// [`Conditions::words_in_place`].
    gin: Option<&'a str>,
}

/// CTEs `{name}_found`, `{name}_rest`, `{name}_keys` (and `{name}_walk` of `how.rows` rows
/// unless `walk` names one to share): `(created_at, id)` of the first `n` live reports, newest
/// first, after the cursor condition `after`, matching `how.matches`.
///
/// Which index finds them fastest depends on how many match, which the planner can only
/// guess for words and boxes, and guesses wrong both ways (correlated words, a dense city, a
/// word it never saw). So it is measured: a walk of the newest [`WALK_ROWS`] rows of the
/// newest-first index takes the matches among them; only when fewer than `n` match there (the
/// filter is rare) are older ones asked of the planner, planned as if at least the capped
/// total were wanted: for a rare filter that is the selective index and a sort of its few
/// matches (planned for a page, a word it guesses at 0.1 % would walk the index again).
/// Every CTE is read lazily, so a walk that fills the page early stops there.
///
/// `how.boxed`: the statement counted its box in [`BOX_PROBE`]; when the box holds at most
/// [`BOX_SORT_ROWS`] reports the keys are the newest of them and the walk is never started
/// (its scans sit under a one-time filter on that count).
///
/// `how.gin`: `q=` with a `bbox=` ([`Conditions::words_in_place`]). The planner cannot judge
/// such a conjunction (it prices every box at 0.1 % and multiplies the words' share with
/// it), so its fallback is not asked of it: the walk's own hits measure how dense the
/// matches are among recent reports. At least [`DENSE_HITS`] of them: the walk goes on
/// through [`MORE_ROWS`] older rows, which settles a match in one report of a few hundred.
/// Fewer, or still not `n`: every match is read from `read_reports_search_place` (the
/// words and the box's cells in one GIN scan, then the exact box) and the newest `n`
/// taken, which costs the matches alone, few by then. Planned without a limit, so no
/// newest-first walk can stand in for the index.
fn walked(name: &str, walk: Option<&str>, after: &str, n: &str, how: &Walk) -> String {
    let Walk {
        rows,
        matches,
        boxed,
        gin,
    } = *how;
    let (large, small) = if boxed {
        let count = format!("(SELECT count(*) FROM {BOX_PROBE})");
        (
            format!(" AND {count} > {BOX_SORT_ROWS}"),
            format!(
                " UNION ALL (SELECT created_at, id FROM {BOX_PROBE} \
                 WHERE {count} <= {BOX_SORT_ROWS}{after} \
                 ORDER BY created_at DESC, id DESC LIMIT {n})"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let mut ctes = Vec::new();
    let walk = match walk {
        Some(shared) => shared.to_owned(),
        None => {
            ctes.push(format!(
                "{name}_walk AS MATERIALIZED (SELECT created_at, id, ({matches}) AS hit \
                 FROM read_reports WHERE deleted_at IS NULL{after}{large} \
                 ORDER BY created_at DESC, id DESC LIMIT {rows})"
            ));
            format!("{name}_walk")
        }
    };
    let oldest = format!("(SELECT created_at, id FROM {walk} ORDER BY created_at, id LIMIT 1)");
    if let Some(gin) = gin {
        let found = format!("(SELECT count(*) FROM {name}_found)");
        let via_gin = format!("(SELECT yes FROM {name}_gin)");
        ctes.push(format!(
            "{name}_found AS MATERIALIZED (SELECT created_at, id FROM {walk} WHERE hit LIMIT {n}), \
             {name}_more AS MATERIALIZED (SELECT created_at, id FROM (SELECT created_at, id, \
             ({matches}) AS hit FROM read_reports WHERE deleted_at IS NULL{after} \
             AND {found} BETWEEN {DENSE_HITS} AND {n} - 1 AND (created_at, id) < {oldest} \
             ORDER BY created_at DESC, id DESC LIMIT {MORE_ROWS}) w WHERE hit LIMIT {n}), \
             {name}_gin AS MATERIALIZED (SELECT {found} < {DENSE_HITS} \
             OR {found} + (SELECT count(*) FROM {name}_more) < {n} AS yes), \
             {name}_all AS MATERIALIZED (SELECT created_at, id FROM read_reports \
             WHERE deleted_at IS NULL AND {gin}{after} AND {via_gin}), \
             {name}_keys AS (SELECT created_at, id FROM {name}_found WHERE NOT {via_gin} \
             UNION ALL SELECT created_at, id FROM {name}_more WHERE NOT {via_gin} \
             UNION ALL (SELECT created_at, id FROM {name}_all \
             ORDER BY created_at DESC, id DESC LIMIT {n}))"
        ));
        return ctes.join(", ");
    }
    ctes.push(format!(
        "{name}_found AS MATERIALIZED (SELECT created_at, id FROM {walk} WHERE hit LIMIT {n}), \
         {name}_rest AS MATERIALIZED (SELECT created_at, id FROM read_reports \
         WHERE deleted_at IS NULL AND {matches}{after}{large} \
         AND (SELECT count(*) FROM {name}_found) < {n} \
         AND (created_at, id) < {oldest} \
         ORDER BY created_at DESC, id DESC LIMIT GREATEST({n}, {})), \
         {name}_keys AS (SELECT created_at, id FROM {name}_found \
         UNION ALL (SELECT created_at, id FROM {name}_rest LIMIT {n}){small})",
        TOTAL_CAP + 1
    ));
    ctes.join(", ")
}

/// Appends one page of documents to `out` (comma-separated; the caller writes the brackets).
pub fn list(
    client: &mut impl GenericClient,
    q: &ListQuery,
    out: &mut Vec<u8>,
) -> Result<Listed, postgres::Error> {
    let source = match near_probe(q) {
        Some(probe) => probe.choose(client)?,
        None => NearSource::Knn,
    };
    let Statement {
        sql,
        mut args,
        conds,
        chord,
        knn,
    } = Statement::build_from(q, source);
    let rows = client.query_typed(&sql, &args.refs())?;
    let mut total = 0;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        total = row.try_get::<_, i64>(0)?;
        if let Some(doc) = row.try_get::<_, Option<String>>(1)? {
            items.push(Item {
                doc,
                created_at: row.try_get(2)?,
                id: row.try_get(3)?,
                chord: row.try_get(4)?,
            });
        }
    }
    let per_page = q.per_page as usize;
    if chord.is_some() {
        sort_nearest(&mut items);
        let boundary =
            items.len() > per_page && items[per_page - 1].chord == items[per_page].chord && knn;
        if boundary {
            // The KNN scan stopped inside a group at one distance: read the whole group, so
            // the page takes its smallest ids and the cursor skips none.
            let at = items[per_page].chord;
            let expr = chord.as_deref().unwrap_or_default();
            let p = args.add(at, Type::FLOAT8);
            let group_sql = format!(
                "SELECT doc, created_at, id, {expr} FROM read_reports WHERE {} AND {expr} = {p}",
                conds.join(" AND ")
            );
            items.retain(|i| i.chord != at);
            for row in client.query_typed(&group_sql, &args.refs())? {
                items.push(Item {
                    doc: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                    id: row.try_get(2)?,
                    chord: row.try_get(3)?,
                });
            }
            sort_nearest(&mut items);
        }
    } else {
        items.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    }
    let more = items.len() > per_page;
    items.truncate(per_page);
    let next = match items.last() {
        Some(last) if more => Some(match last.chord {
            Some(chord) => Cursor::Near { chord, id: last.id },
            None => Cursor::Newest {
                created_at: last.created_at,
                id: last.id,
            },
        }),
        _ => None,
    };
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        match item.chord {
            Some(chord) => with_distance(&item.doc, geo::chord_to_metres(chord), out),
            None => out.extend_from_slice(item.doc.as_bytes()),
        }
    }
    let capped = q.counted() && total > TOTAL_CAP;
    Ok(Listed {
        total: if q.counted() {
            total.min(TOTAL_CAP)
        } else {
            total
        },
        capped,
        next,
    })
}

fn sort_nearest(items: &mut [Item]) {
    items.sort_by(|a, b| {
        a.chord
            .unwrap_or(0.0)
            .total_cmp(&b.chord.unwrap_or(0.0))
            .then(a.id.cmp(&b.id))
    });
}

/// The stored document with `"distance_m"` added as its last field (metres, 0.1 m steps).
fn with_distance(doc: &str, metres: f64, out: &mut Vec<u8>) {
    let body = doc.trim_end();
    match body.strip_suffix('}') {
        Some(open) => {
            out.extend_from_slice(open.as_bytes());
            let sep = if open.trim_end().ends_with('{') {
                ""
            } else {
                ","
            };
            let rounded = (metres * 10.0).round() / 10.0;
            out.extend_from_slice(format!("{sep}\"distance_m\":{rounded}}}").as_bytes());
        }
        // Documents are always objects (render.rs invariant); never emit broken JSON anyway.
        None => out.extend_from_slice(doc.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Vec<(String, String)> {
        shared::http::parse_query(q).unwrap()
    }

    fn check(query: &str, expect: &str) {
        let got = match ListQuery::parse(&params(query)) {
            Ok(q) => format!("{q:?}"),
            Err(e) => format!("{}: {}", e.status(), e.message()),
        };
        assert!(
            got.contains(expect),
            "{query:?}: expected {expect:?} in {got}"
        );
    }

    #[test]
    fn parameters() {
        check("", "page: Some(1), per_page: 20");
        check("q=jalan+rusak", "q: Some(\"jalan rusak\")");
        check("q=+++", "q: None");
        check(&format!("q={}", "a".repeat(200)), "q: Some(");
        check(
            &format!("q={}", "a".repeat(201)),
            "400: q is too long: 201 characters, the limit is 200",
        );
        check("q=a%00b", "400: q contains a control character");
        check("q=a&q=b", "400: parameter q given more than once");
        check("near=-6.2,106.8", "lat: -6.2, lng: 106.8 }, 1000.0))");
        check("near=-6.2,106.8&radius_m=50000", "50000.0))");
        check("near=-6.2,106.8&radius_m=50001", "400: radius_m must be");
        check("near=-6.2,106.8&radius_m=0", "400: radius_m must be");
        check("radius_m=10", "400: radius_m needs near");
        check("near=abc", "400: near must be LAT,LNG");
        check("near=95,1", "400: near: lat must be");
        check("bbox=106.7,-6.3,106.9,-6.1", "min_lng: 106.7");
        check("bbox=1,2,3", "400: bbox must be");
        check(
            "bbox=106.7,-6.3,106.9,-6.1&near=-6.2,106.8",
            "400: near and bbox cannot be combined",
        );
        let id = "0b6f3c1e2d4a4b5c8d9e0f1a2b3c4d5e";
        check(&format!("cursor=n.1.{id}"), "page: None");
        check(
            &format!("cursor=n.1.{id}&page=2"),
            "400: cursor and page cannot",
        );
        check("cursor=zzz", "400: cursor \"zzz\" is malformed");
        check(
            &format!("cursor=n.1.{id}&near=1,1"),
            "400: cursor does not belong to this query",
        );
        check(
            &format!("cursor=d.0.{id}"),
            "400: cursor does not belong to this query",
        );
        check(&format!("cursor=d.0.{id}&near=1,1"), "Near { chord: 0.0");
        check(
            "category=kebersihan&q=x&bbox=0,0,1,1",
            "category: Some(Kebersihan)",
        );
        check("page=0", "400: page must be a positive integer");
    }

    #[test]
    fn box_areas() {
        let check = |bbox: &str, expect_km2: f64| {
            let b = geo::parse_bbox(bbox).unwrap();
            let got = area_m2(&b) / 1e6;
            assert!(
                (got - expect_km2).abs() <= expect_km2 * 0.005,
                "{bbox}: expected {expect_km2} km², got {got}"
            );
        };
        // The bench's boxes: ~1 km² in Bandung (counted first), a 5.5 km square in Jakarta
        // (walked).
        check("107.6046,-6.9223,107.6136,-6.9133", 0.994);
        check("106.80,-6.20,106.85,-6.15", 30.73);
        // A degree square at the equator, and the same at 60° is half as wide.
        check("0,0,1,1", 12_363.7);
        check("0,59.5,1,60.5", 6_182.1);
        check("10,10,10,10", 0.0);
        assert!(
            area_m2(&geo::parse_bbox("107.6046,-6.9223,107.6136,-6.9133").unwrap())
                <= BOX_PROBE_MAX_M2
        );
        assert!(area_m2(&geo::parse_bbox("106.80,-6.20,106.85,-6.15").unwrap()) > BOX_PROBE_MAX_M2);
    }

    #[test]
    fn distances_are_spliced_into_documents() {
        let check = |doc: &str, metres: f64, expect: &str| {
            let mut out = Vec::new();
            with_distance(doc, metres, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expect);
        };
        check(r#"{"id":1}"#, 12.345, r#"{"id":1,"distance_m":12.3}"#);
        check(r#"{}"#, 0.0, r#"{"distance_m":0}"#);
        check("[1]", 1.0, "[1]");
    }
}
