//! The chart's Grafana dashboards (`charts/meshd/dashboards/*.json`) against
//! what meshd and its sidecars really export.
//!
//! ```text
//! dashboard JSON ──every target's expr, every variable's query──> PromQL tokenizer
//!                                     │ metric names, their label matchers, by/on labels
//!                                     ▼
//! real scrape: meshd run's /metrics + each Envoy's :15090/stats/prometheus (after traffic)
//! ```
//!
//! The mesh runs on loopback (127.81.0.x): the real `meshd run` binary on a
//! file registry, and real Envoy sidecars bootstrapped by `meshd bootstrap`.
//! client-0 calls web (HTTP, answers 200 and 503) through its proxy; db is a
//! TCP service, whose TCP proxies (db-0's inbound, and the outbound of
//! tcp-client-0, a pod with capture) give the TCP series, at zero: loopback
//! has no traffic capture to send them a connection (tests/tests/telemetry.rs
//! counts real TCP traffic in network namespaces). A plaintext connection to the
//! xDS port and a rejected listener make meshd's by-type and by-reason
//! counters appear. Then every metric a dashboard uses must be in the
//! scrape, with every label its selectors and groupings name.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshd_tests::envoy::{self, Envoy, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::process::{Process, free_port, local_bootstrap, meshd_binary};
use meshd_tests::registry;

// --- PromQL ------------------------------------------------------------------

/// How a label matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Matcher {
    label: String,
    op: MatchOp,
    value: String,
}

/// A vector selector: `metric{label="value",…}`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// What one PromQL expression reads: its selectors, and the labels its
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` clauses name.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    selectors: Vec<Selector>,
    grouping: BTreeSet<String>,
}

/// PromQL's functions (Prometheus 3).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_avg",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_stddev",
    "histogram_stdvar",
    "histogram_sum",
    "holt_winters",
    "double_exponential_smoothing",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "mad_over_time",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sort_by_label",
    "sort_by_label_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// PromQL's aggregation operators, which may carry `by`/`without`.
const AGGREGATIONS: &[&str] = &[
    "avg",
    "bottomk",
    "count",
    "count_values",
    "group",
    "limitk",
    "limit_ratio",
    "max",
    "min",
    "quantile",
    "stddev",
    "stdvar",
    "sum",
    "topk",
];

/// Keywords followed by a list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Words that are operators or literals, not metrics.
const WORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// A small PromQL tokenizer: enough to find every metric name, its label
/// matchers and the grouping labels, and to refuse what it does not know
/// (an unknown function, an unterminated string or selector) rather than
/// misread it.
struct Lexer<'a> {
    text: &'a str,
    chars: Vec<char>,
    at: usize,
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str) -> Self {
        Lexer {
            text,
            chars: text.chars().collect(),
            at: 0,
        }
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at character {} of `{}`", self.at, self.text)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn ident(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(is_ident) {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    /// The identifier at the cursor, which stays where it is.
    fn next_ident(&mut self) -> String {
        let at = self.at;
        let word = self.ident();
        self.at = at;
        word
    }

    /// A quoted string (", ' or `), unescaped.
    fn string(&mut self) -> Result<String, String> {
        let quote = self.peek().ok_or_else(|| self.error("expected a string"))?;
        if !matches!(quote, '"' | '\'' | '`') {
            return Err(self.error("expected a quoted string"));
        }
        self.at += 1;
        let mut value = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(c) if c == quote => {
                    self.at += 1;
                    return Ok(value);
                }
                Some('\\') if quote != '`' => {
                    self.at += 1;
                    let escaped = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    value.push(escaped);
                    self.at += 1;
                }
                Some(c) => {
                    value.push(c);
                    self.at += 1;
                }
            }
        }
    }

    /// `{label op "value", …}`, the `{` already consumed.
    fn matchers(&mut self) -> Result<Vec<Matcher>, String> {
        let mut matchers = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                Some('}') => {
                    self.at += 1;
                    return Ok(matchers);
                }
                Some(',') => {
                    self.at += 1;
                    continue;
                }
                Some(c) if is_ident_start(c) => {}
                _ => return Err(self.error("expected a label name in a selector")),
            }
            let label = self.ident();
            self.skip_space();
            let rest: String = self.chars[self.at..].iter().take(2).collect();
            let op = if rest.starts_with("=~") {
                MatchOp::Regex
            } else if rest.starts_with("!=") {
                MatchOp::NotEqual
            } else if rest.starts_with("!~") {
                MatchOp::NotRegex
            } else if rest.starts_with('=') {
                MatchOp::Equal
            } else {
                return Err(self.error(&format!("expected =, !=, =~ or !~ after {label}")));
            };
            self.at += if op == MatchOp::Equal { 1 } else { 2 };
            self.skip_space();
            let value = self.string()?;
            matchers.push(Matcher { label, op, value });
        }
    }

    /// `(label, …)` after a grouping keyword.
    fn label_list(&mut self, keyword: &str) -> Result<Vec<String>, String> {
        self.skip_space();
        if self.peek() != Some('(') {
            // group_left and group_right may stand alone.
            return if keyword.starts_with("group_") {
                Ok(Vec::new())
            } else {
                Err(self.error(&format!("expected ( after {keyword}")))
            };
        }
        self.at += 1;
        let mut labels = Vec::new();
        loop {
            self.skip_space();
            match self.peek() {
                Some(')') => {
                    self.at += 1;
                    return Ok(labels);
                }
                Some(',') => self.at += 1,
                Some(c) if is_ident_start(c) => labels.push(self.ident()),
                _ => return Err(self.error(&format!("expected a label name in {keyword}(…)"))),
            }
        }
    }

    /// Skips `[…]` (a range, a subquery's, or a Grafana variable in one).
    fn skip_range(&mut self) -> Result<(), String> {
        let mut depth = 0;
        while let Some(c) = self.peek() {
            self.at += 1;
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Err(self.error("unterminated ["))
    }
}

/// The metrics, matchers and grouping labels of a PromQL expression, which
/// may hold Grafana variables (`$var`, `${var}`, `$__rate_interval`).
fn parse_promql(text: &str) -> Result<Query, String> {
    let mut lx = Lexer::new(text);
    let mut query = Query::default();
    while let Some(c) = {
        lx.skip_space();
        lx.peek()
    } {
        match c {
            '"' | '\'' | '`' => {
                lx.string()?;
            }
            '[' => lx.skip_range()?,
            '{' => {
                // A selector without a name: {__name__="metric", …}.
                lx.at += 1;
                let matchers = lx.matchers()?;
                let metric = matchers
                    .iter()
                    .find(|m| m.label == "__name__" && m.op == MatchOp::Equal)
                    .map(|m| m.value.clone())
                    .ok_or_else(|| lx.error("a selector without a metric name"))?;
                let matchers = matchers
                    .into_iter()
                    .filter(|m| m.label != "__name__")
                    .collect();
                query.selectors.push(Selector { metric, matchers });
            }
            '$' => {
                lx.at += 1;
                if lx.peek() == Some('{') {
                    while lx.peek().is_some_and(|c| c != '}') {
                        lx.at += 1;
                    }
                    lx.at += 1;
                } else {
                    lx.ident();
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (0.99, 1e3, 5m, 1h30m).
                while lx
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.')
                {
                    lx.at += 1;
                }
            }
            '(' | ')' | ',' | '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | '@' => {
                lx.at += 1;
            }
            c if is_ident_start(c) => {
                let word = lx.ident();
                let lower = word.to_ascii_lowercase();
                lx.skip_space();
                let next = lx.peek();
                if GROUPING.contains(&word.as_str()) {
                    query.grouping.extend(lx.label_list(&word)?);
                } else if WORDS.contains(&lower.as_str()) {
                } else if next == Some('(') {
                    if !FUNCTIONS.contains(&word.as_str()) && !AGGREGATIONS.contains(&word.as_str())
                    {
                        return Err(lx.error(&format!("unknown function {word}")));
                    }
                } else if AGGREGATIONS.contains(&word.as_str())
                    && ["by", "without"].contains(&lx.next_ident().as_str())
                {
                    // `sum by (…) (…)`: the keyword comes next.
                } else if AGGREGATIONS.contains(&word.as_str())
                    || FUNCTIONS.contains(&word.as_str())
                {
                    return Err(lx.error(&format!("{word} must be followed by (")));
                } else {
                    let matchers = if next == Some('{') {
                        lx.at += 1;
                        lx.matchers()?
                    } else {
                        Vec::new()
                    };
                    query.selectors.push(Selector {
                        metric: word,
                        matchers,
                    });
                }
            }
            other => return Err(lx.error(&format!("unexpected {other:?}"))),
        }
    }
    Ok(query)
}

/// A Grafana Prometheus variable query: `label_values(expr, label)`,
/// `label_values(label)`, `query_result(expr)`, or an expression. The
/// expression read, and the label whose values it lists.
fn parse_variable_query(text: &str) -> Result<(Query, Option<String>), String> {
    let text = text.trim();
    if let Some(inner) = text
        .strip_prefix("label_values(")
        .and_then(|t| t.strip_suffix(')'))
    {
        // The label is after the last comma outside braces and strings.
        let mut depth = 0i32;
        let mut quoted = None;
        let mut split = None;
        for (i, c) in inner.char_indices() {
            match (quoted, c) {
                (Some(q), c) if c == q => quoted = None,
                (Some(_), _) => {}
                (None, '"' | '\'' | '`') => quoted = Some(c),
                (None, '{' | '(' | '[') => depth += 1,
                (None, '}' | ')' | ']') => depth -= 1,
                (None, ',') if depth == 0 => split = Some(i),
                _ => {}
            }
        }
        return match split {
            Some(i) => Ok((
                parse_promql(&inner[..i])?,
                Some(inner[i + 1..].trim().to_string()),
            )),
            None => Ok((Query::default(), Some(inner.trim().to_string()))),
        };
    }
    if let Some(inner) = text
        .strip_prefix("query_result(")
        .and_then(|t| t.strip_suffix(')'))
    {
        return Ok((parse_promql(inner)?, None));
    }
    Ok((parse_promql(text)?, None))
}

// --- the dashboards ----------------------------------------------------------

/// One query of a dashboard, with where it is.
#[derive(Debug)]
struct DashboardQuery {
    /// `service.json: panel "Latency"` or `service.json: variable service`.
    place: String,
    query: Query,
    /// A variable's `label_values` label.
    listed_label: Option<String>,
}

fn dashboards_dir() -> PathBuf {
    envoy::workspace_root().join("charts/meshd/dashboards")
}

/// Every expression of every panel (rows included) of `board`.
fn panel_exprs(value: &serde_json::Value, panel: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            let title = map
                .get("title")
                .and_then(|t| t.as_str())
                .unwrap_or(panel)
                .to_string();
            if let Some(expr) = map.get("expr").and_then(|e| e.as_str()) {
                out.push((panel.to_string(), expr.to_string()));
            }
            for (key, child) in map {
                if key != "templating" {
                    panel_exprs(child, &title, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                panel_exprs(item, panel, out);
            }
        }
        _ => {}
    }
}

/// Every dashboard's queries, or what is wrong with them.
fn dashboard_queries() -> Vec<(String, Vec<DashboardQuery>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .expect("charts/meshd/dashboards exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no dashboards in charts/meshd/dashboards"
    );
    let mut all = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let board: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let mut queries = Vec::new();
        let mut exprs = Vec::new();
        panel_exprs(&board["panels"], "", &mut exprs);
        for (panel, expr) in exprs {
            let query =
                parse_promql(&expr).unwrap_or_else(|e| panic!("{name}: panel {panel:?}: {e}"));
            queries.push(DashboardQuery {
                place: format!("{name}: panel {panel:?}"),
                query,
                listed_label: None,
            });
        }
        for var in board["templating"]["list"].as_array().into_iter().flatten() {
            if var["type"] != "query" {
                continue;
            }
            let text = var["query"]["query"]
                .as_str()
                .or_else(|| var["query"].as_str())
                .unwrap_or_else(|| panic!("{name}: variable {} has no query", var["name"]));
            let (query, listed_label) = parse_variable_query(text)
                .unwrap_or_else(|e| panic!("{name}: variable {}: {e}", var["name"]));
            queries.push(DashboardQuery {
                place: format!("{name}: variable {}", var["name"]),
                query,
                listed_label,
            });
        }
        all.push((name, queries));
    }
    all
}

/// Labels Prometheus adds to every series it scrapes (the target's), so no
/// exporter shows them.
const TARGET_LABELS: &[&str] = &["instance", "job"];

#[test]
fn dashboards_parse_and_read_prometheus_through_the_datasource_variable() {
    for path in std::fs::read_dir(dashboards_dir()).unwrap() {
        let path = path.unwrap().path();
        let name = path.display().to_string();
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            board["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("meshd-")),
            "{name}"
        );
        assert!(board["title"].is_string(), "{name}");
        let variables = board["templating"]["list"].as_array().unwrap();
        assert!(
            variables.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: a Prometheus datasource variable"
        );
        // Every panel, target and variable reads that variable's datasource.
        let mut exprs = Vec::new();
        panel_exprs(&board["panels"], "", &mut exprs);
        assert!(!exprs.is_empty(), "{name}: no queries");
        fn datasources(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(ds) = map.get("datasource") {
                        out.push(ds.clone());
                    }
                    map.values().for_each(|c| datasources(c, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|c| datasources(c, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        datasources(&board, &mut found);
        for ds in found {
            assert_eq!(ds["uid"], "${datasource}", "{name}: {ds}");
            assert_eq!(ds["type"], "prometheus", "{name}: {ds}");
        }
    }
    // Every query parses, and each panel's names something.
    for (name, queries) in dashboard_queries() {
        assert!(
            queries.iter().any(|q| !q.query.selectors.is_empty()),
            "{name}: no metric found"
        );
        for q in queries {
            assert!(
                !q.query.selectors.is_empty() || q.listed_label.is_some(),
                "{}: no metric found",
                q.place
            );
        }
    }
}

#[test]
fn the_tokenizer_finds_metrics_matchers_and_grouping_labels() {
    let q = parse_promql(
        r#"histogram_quantile(0.99, sum by (le, destination_service) (rate(envoy_cluster_upstream_rq_time_bucket{direction="outbound",workload=~"$workload"}[$__rate_interval])))"#,
    )
    .unwrap();
    assert_eq!(q.selectors.len(), 1);
    assert_eq!(
        q.selectors[0].metric,
        "envoy_cluster_upstream_rq_time_bucket"
    );
    assert_eq!(
        q.selectors[0].matchers,
        vec![
            Matcher {
                label: "direction".into(),
                op: MatchOp::Equal,
                value: "outbound".into()
            },
            Matcher {
                label: "workload".into(),
                op: MatchOp::Regex,
                value: "$workload".into()
            },
        ]
    );
    assert_eq!(
        q.grouping,
        ["destination_service", "le"].map(String::from).into()
    );

    // Postfix grouping, binary operators, on/group_left, offsets, numbers,
    // strings as function arguments, a selector by __name__.
    let q = parse_promql(
        r#"sum(rate(a_total{x!="1"}[5m] offset 1h)) by (x) / on (x) group_left(y) max without (z) (b) > bool 0.5 * 1e3
           or label_replace({__name__="d"}, "dst", "$1", "src", "(.*)") unless count_values("v", e) and topk(3, f:recorded)"#,
    )
    .unwrap();
    let metrics: Vec<&str> = q.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["a_total", "b", "d", "e", "f:recorded"]);
    assert_eq!(q.grouping, ["x", "y", "z"].map(String::from).into());
    assert_eq!(q.selectors[0].matchers[0].op, MatchOp::NotEqual);
    assert!(q.selectors[2].matchers.is_empty(), "__name__ is the metric");

    // A metric whose name starts like a keyword is a metric.
    let q = parse_promql("sum(bytes_total) + by_zone").unwrap();
    let metrics: Vec<&str> = q.selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(metrics, ["bytes_total", "by_zone"]);

    // What it cannot read is an error that says where.
    for (bad, says) in [
        ("rat(x[5m])", "unknown function rat"),
        ("x{a=\"b}", "unterminated string"),
        ("x{a~\"b\"}", "expected =, !=, =~ or !~ after a"),
        ("sum by x (y)", "expected ( after by"),
        ("x[5m", "unterminated ["),
        ("x # y", "unexpected '#'"),
        ("sum + x", "sum must be followed by ("),
    ] {
        let e = parse_promql(bad).unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }

    // Grafana variable queries.
    let (q, label) = parse_variable_query(
        r#"label_values(envoy_cluster_upstream_rq_total{direction="outbound",destination_namespace=~"$namespace"}, destination_service)"#,
    )
    .unwrap();
    assert_eq!(label.as_deref(), Some("destination_service"));
    assert_eq!(q.selectors[0].metric, "envoy_cluster_upstream_rq_total");
    assert_eq!(q.selectors[0].matchers.len(), 2);
    let (q, label) = parse_variable_query("label_values(workload)").unwrap();
    assert!(q.selectors.is_empty());
    assert_eq!(label.as_deref(), Some("workload"));
    let (q, _) = parse_variable_query("query_result(sum by (a) (b))").unwrap();
    assert_eq!(q.selectors[0].metric, "b");
}

// --- a real scrape -----------------------------------------------------------

/// One series of a Prometheus text exposition.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// The series of a Prometheus text exposition (Envoy's or prometheus-client's).
fn parse_exposition(text: &str) -> Result<Vec<Series>, String> {
    let mut series = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut lx = Lexer::new(line);
        let name = lx.ident();
        if name.is_empty() {
            return Err(format!("no metric name in {line:?}"));
        }
        let mut labels = BTreeMap::new();
        if lx.peek() == Some('{') {
            lx.at += 1;
            for m in lx.matchers()? {
                labels.insert(m.label, m.value);
            }
        }
        lx.skip_space();
        let value: String = lx.chars[lx.at..].iter().collect();
        let value = value.split_whitespace().next().unwrap_or("");
        if value.parse::<f64>().is_err() && !["NaN", "+Inf", "-Inf"].contains(&value) {
            return Err(format!("no value in {line:?}"));
        }
        series.push(Series { name, labels });
    }
    Ok(series)
}

/// Whether `series` satisfies what can be checked of `m` without
/// Grafana's variables: equality, and regexes that are alternations of
/// plain words (`inbound|outbound`).
fn satisfies(series: &Series, m: &Matcher) -> bool {
    let value = series.labels.get(&m.label).map(String::as_str);
    if m.value.contains('$') {
        return value.is_some();
    }
    let plain = |v: &str| {
        v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    match m.op {
        MatchOp::Equal => value.unwrap_or("") == m.value,
        MatchOp::Regex if m.value.split('|').all(plain) => {
            m.value.split('|').any(|alt| value.unwrap_or("") == alt)
        }
        // A matcher that excludes (or a regex this test does not
        // evaluate) still names a label the series must carry.
        _ => value.is_some(),
    }
}

/// What is wrong with `query` against the scraped `series`: a metric
/// missing, no series its literal matchers select, or a label its
/// selectors, groupings or `label_values` name that none of them carries.
fn check_against(q: &DashboardQuery, series: &[Series]) -> Vec<String> {
    let mut problems = Vec::new();
    for selector in &q.query.selectors {
        let of_metric: Vec<&Series> = series
            .iter()
            .filter(|s| s.name == selector.metric)
            .collect();
        if of_metric.is_empty() {
            problems.push(format!(
                "{}: {} is not exported by meshd or any sidecar",
                q.place, selector.metric
            ));
            continue;
        }
        let selected: Vec<&Series> = of_metric
            .iter()
            .copied()
            .filter(|s| selector.matchers.iter().all(|m| satisfies(s, m)))
            .collect();
        if selected.is_empty() {
            problems.push(format!(
                "{}: no series of {} matches {:?}; its series: {:?}",
                q.place,
                selector.metric,
                selector.matchers,
                of_metric
                    .iter()
                    .take(5)
                    .map(|s| &s.labels)
                    .collect::<Vec<_>>()
            ));
            continue;
        }
        let wanted = q
            .query
            .grouping
            .iter()
            .chain(q.listed_label.iter())
            .filter(|l| !TARGET_LABELS.contains(&l.as_str()));
        for label in wanted {
            if !selected.iter().any(|s| s.labels.contains_key(label)) {
                problems.push(format!(
                    "{}: no series of {}{{{}}} carries the label {label}",
                    q.place,
                    selector.metric,
                    selector
                        .matchers
                        .iter()
                        .map(|m| format!("{}{:?}", m.label, m.value))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
        }
    }
    problems
}

#[test]
fn the_scrape_check_reports_a_missing_metric_selection_or_label() {
    let series = parse_exposition(concat!(
        "# TYPE envoy_cluster_upstream_rq_total counter\n",
        "envoy_cluster_upstream_rq_total{direction=\"outbound\",destination_service=\"web\",workload_identity=\"spiffe://a/b\"} 5\n",
        "meshd_xds_nacks_total{type=\"LDS\"} 1\n",
        "envoy_cluster_upstream_rq_time_bucket{direction=\"outbound\",le=\"+Inf\"} 3\n",
        "# EOF\n",
    ))
    .unwrap();
    assert_eq!(series.len(), 3);
    let check = |expr: &str| {
        let q = DashboardQuery {
            place: "test".into(),
            query: parse_promql(expr).unwrap(),
            listed_label: None,
        };
        check_against(&q, &series)
    };
    assert!(check(r#"sum by (destination_service) (rate(envoy_cluster_upstream_rq_total{direction="outbound",workload=~"$w|x"}[5m]))"#)
        .iter()
        .any(|p| p.contains("no series of envoy_cluster_upstream_rq_total matches")));
    assert_eq!(
        check(
            r#"sum by (destination_service, instance) (rate(envoy_cluster_upstream_rq_total{direction=~"inbound|outbound",destination_service=~"$s"}[5m]))"#
        ),
        Vec::<String>::new()
    );
    let problems = check(
        r#"sum by (type, reason) (rate(meshd_xds_nack_total[5m])) + sum by (reason) (meshd_xds_nacks_total)"#,
    );
    assert!(
        problems[0].contains("meshd_xds_nack_total is not exported"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("carries the label reason"),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    let problems = check(r#"envoy_cluster_upstream_rq_total{direction="inbound"}"#);
    assert!(problems[0].contains("no series"), "{problems:?}");
    assert!(
        check(r#"histogram_quantile(0.5, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket{direction="outbound"}[5m])))"#)
            .is_empty()
    );
    assert!(parse_exposition("{a=\"b\"} 1").is_err());
    assert!(parse_exposition("metric{a=\"b\"}").is_err());
}

const NS: &str = "dash";
const WAIT: Duration = Duration::from_secs(60);
/// Pods on 127.81.0.x: no other test uses that block.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 81, 0, 1));
const WEB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 81, 0, 2));
const DB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 81, 0, 3));
/// A pod with traffic capture: its outbound listeners (on 0.0.0.0, as in a
/// pod) have a TCP proxy per TCP service port, so the outbound TCP series
/// exist. No traffic reaches it: there is no capture on loopback.
const TCP_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 81, 0, 4));
const DB_PORT: u16 = 5432;
/// An address this host does not have: a listener there is rejected.
const UNBINDABLE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 255, 254));

fn mesh_yaml(client_ip: IpAddr, web_port: u16) -> String {
    let db = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: {NS}}}\nspec: {{clusterIP: 198.19.0.31, ports: [{{name: tcp-echo, port: {DB_PORT}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db-1, namespace: {NS}, labels: {{kubernetes.io/service-name: db}}}}\naddressType: IPv4\nports: [{{name: tcp-echo, port: {DB_PORT}}}]\nendpoints: [{{addresses: [\"{DB}\"], targetRef: {{kind: Pod, name: db-0}}}}]\n"
    );
    registry::documents(&[
        registry::namespace(NS),
        registry::http_service(NS, "web", "198.19.0.30", 80),
        registry::slice(NS, "web-1", "web", web_port, &[("web-0", WEB)]),
        db,
        registry::pod(NS, "client-0", client_ip, false),
        registry::pod(NS, "web-0", WEB, false),
        registry::pod(NS, "db-0", DB, false),
        registry::pod(NS, "tcp-client-0", TCP_CLIENT, true),
    ])
}

#[test]
fn every_metric_and_label_the_dashboards_use_is_exported_by_meshd_and_envoy() {
    meshd_tests::init_tracing();
    // Parse first: a dashboard that does not parse fails without Envoy too.
    let dashboards = dashboard_queries();
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let meshd = meshd_binary();
    let work = meshd_tests::workdir().unwrap();
    let registry_dir = work.path().join("registry");
    std::fs::create_dir(&registry_dir).unwrap();
    let app = App::serve("web-0", TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let mesh = registry_dir.join("mesh.yaml");
    std::fs::write(&mesh, mesh_yaml(CLIENT, app.addr.port())).unwrap();

    let (xds, debug) = (free_port(), free_port());
    let log_path = work.path().join("meshd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _cp = Process(
        Command::new(&meshd)
            .args(["run", "--debounce-ms", "20"])
            .arg("--registry")
            .arg(&registry_dir)
            .arg("--xds-address")
            .arg(xds.to_string())
            .arg("--debug-address")
            .arg(debug.to_string())
            .arg("--ca-dir")
            .arg(work.path().join("ca"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let cp_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("meshd run to be ready", WAIT, || {
        match http::get(debug, &debug.to_string(), "/readyz", false) {
            Ok(r) if r.status == 200 => Ok(Some(())),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cp_log()));

    let mut envoys = Vec::new();
    for (pod, ip) in [
        ("client-0", CLIENT),
        ("web-0", WEB),
        ("db-0", DB),
        ("tcp-client-0", TCP_CLIENT),
    ] {
        let bootstrap =
            local_bootstrap(&meshd, work.path(), NS, pod, pod, ip, &xds.to_string(), &[]).unwrap();
        let admin = SocketAddr::new(ip, 15000);
        envoys.push(Envoy::start(pod, &envoy_bin, &bootstrap, admin, &[], work.path()).unwrap());
    }
    let logs = |envoys: &[Envoy]| {
        let tails: Vec<String> = envoys.iter().map(|e| e.log_tail()).collect();
        format!("{}\n--- meshd ---\n{}", tails.join("\n"), cp_log())
    };

    // HTTP through both proxies (client-0's explicit-proxy listener, mTLS
    // to web-0's inbound): 200s and 503s.
    let call = |path: &str| {
        http::get(SocketAddr::new(CLIENT, 15001), "web.dash", path, true).map(|r| r.status)
    };
    wait_for("web to answer through the mesh", WAIT, || match call("/") {
        Ok(200) => Ok(Some(())),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&envoys)));
    for _ in 0..3 {
        assert_eq!(call("/").unwrap(), 200);
    }
    for _ in 0..2 {
        assert_eq!(call("/status/503").unwrap(), 503);
    }

    // A client that does not speak TLS on the xDS port: a handshake failure.
    let mut plain = TcpStream::connect(xds).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: meshd\r\n\r\n")
        .unwrap();
    let _ = plain.read_to_end(&mut Vec::new());

    // client-0 moved to an address this host does not have: its outbound
    // listener cannot bind, and Envoy rejects the LDS update (a NACK).
    std::fs::write(&mesh, mesh_yaml(UNBINDABLE, app.addr.port())).unwrap();

    let scrape_all = || -> Result<Vec<Series>, String> {
        let mut all = Vec::new();
        for ip in [CLIENT, WEB, DB, TCP_CLIENT] {
            let addr = SocketAddr::new(ip, 15090);
            let r = http::get(addr, "localhost", "/stats/prometheus", false)
                .map_err(|e| format!("{addr}: {e:#}"))?;
            if r.status != 200 {
                return Err(format!("{addr}/stats/prometheus: HTTP {}", r.status));
            }
            all.extend(parse_exposition(&r.body).map_err(|e| format!("{addr}: {e}"))?);
        }
        let r = http::get(debug, &debug.to_string(), "/metrics", false)
            .map_err(|e| format!("meshd /metrics: {e:#}"))?;
        all.extend(parse_exposition(&r.body).map_err(|e| format!("meshd /metrics: {e}"))?);
        Ok(all)
    };
    // Histograms reach Envoy's Prometheus endpoint at its next stats flush
    // and the NACK after the registry is read again: poll until every
    // dashboard query finds what it reads.
    let checked = wait_for("every dashboard query to find its series", WAIT, || {
        let series = scrape_all()?;
        let problems: Vec<String> = dashboards
            .iter()
            .flat_map(|(_, queries)| queries.iter())
            .flat_map(|q| check_against(q, &series))
            .collect();
        if problems.is_empty() {
            Ok(Some(series))
        } else {
            Err(problems.join("\n"))
        }
    });
    let series = match checked {
        Ok(series) => series,
        Err(e) => panic!("{e:#}\n{}", logs(&envoys)),
    };

    // tcp-client-0's outbound TCP series come from a listener Envoy
    // accepted and serves, not from one it rejected.
    let listeners = http::get(
        SocketAddr::new(TCP_CLIENT, 15000),
        "localhost",
        "/listeners",
        false,
    )
    .unwrap();
    assert!(
        listeners.body.contains("outbound::0.0.0.0:15001"),
        "{}",
        listeners.body
    );
    assert!(
        series
            .iter()
            .any(|s| s.name == "envoy_tcp_downstream_cx_total"
                && s.labels
                    .get("workload")
                    .is_some_and(|w| w == "tcp-client-0")
                && s.labels
                    .get("destination_service")
                    .is_some_and(|d| d == "db")),
        "tcp-client-0's TCP proxy to db"
    );

    // Not vacuous: every dashboard read something, from both sources.
    let used: BTreeSet<&str> = dashboards
        .iter()
        .flat_map(|(_, queries)| queries.iter())
        .flat_map(|q| q.query.selectors.iter().map(|s| s.metric.as_str()))
        .collect();
    println!(
        "{} metrics used by the dashboards, all exported:",
        used.len()
    );
    for metric in &used {
        println!("  {metric}");
    }
    assert!(used.iter().any(|m| m.starts_with("envoy_")), "{used:?}");
    assert!(used.iter().any(|m| m.starts_with("meshd_")), "{used:?}");
    // The NACK and the handshake failure are what the control plane
    // dashboard shows by type and by reason.
    assert!(
        series.iter().any(|s| s.name == "meshd_xds_nacks_total"
            && s.labels.get("type").is_some_and(|t| t == "LDS")),
        "a NACK of type LDS"
    );
    assert!(
        series
            .iter()
            .any(|s| s.name == "meshd_xds_tls_handshake_failures_total"
                && s.labels.contains_key("reason")),
        "a handshake failure with its reason"
    );
}
