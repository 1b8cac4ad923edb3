//! Reading the Prometheus text exposition a sidecar's `/metrics` serves: just enough to
//! sum the samples of a metric family, by label.

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sample of the text; comments and lines that do not parse are skipped (a scrape
/// is read for a summary, not validated).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

/// Sum of the samples named `name` whose labels include every `(key, value)` of `matching`.
pub fn sum(samples: &[Sample], name: &str, matching: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| matching.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// Whether any sample is named `name`: tells "zero" from "this build has no such metric".
pub fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let (labels, consumed) = parse_labels(&line[name_end + 1..])?;
        (labels, &line[name_end + 1 + consumed..])
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",...}` and returns the labels and the bytes consumed, closing brace included.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, usize)> {
    let mut labels = Vec::new();
    let mut chars = text.char_indices().peekable();
    loop {
        while chars
            .next_if(|(_, c)| *c == ',' || c.is_whitespace())
            .is_some()
        {}
        let (start, c) = chars.next()?;
        if c == '}' {
            return Some((labels, start + 1));
        }
        let mut key_end = start;
        let mut found_eq = false;
        for (i, c) in chars.by_ref() {
            if c == '=' {
                key_end = i;
                found_eq = true;
                break;
            }
        }
        if !found_eq || chars.next()?.1 != '"' {
            return None;
        }
        let key = text[start..key_end].trim().to_owned();
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        labels.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"
# HELP outbound_requests Requests sent.
# TYPE outbound_requests counter
outbound_requests_total{backend="backend-v1",status="200"} 790
outbound_requests_total{backend="backend-v1",status="503"} 3
outbound_requests_total{backend="backend-v2",status="200"} 207 1700000000000
retries_total 41
weird{path="a \"quoted\", value\\",x="1"} 2.5e1
bucket_le{le="+Inf"} +Inf
not a sample line
"#;

    #[test]
    fn sums_by_name_and_labels() {
        let samples = parse(SCRAPE);
        assert_eq!(sum(&samples, "outbound_requests_total", &[]), 1000.0);
        assert_eq!(
            sum(
                &samples,
                "outbound_requests_total",
                &[("backend", "backend-v1")]
            ),
            793.0
        );
        assert_eq!(
            sum(
                &samples,
                "outbound_requests_total",
                &[("backend", "backend-v1"), ("status", "200")]
            ),
            790.0
        );
        assert_eq!(sum(&samples, "retries_total", &[]), 41.0);
        assert!(has(&samples, "retries_total"));
        assert!(!has(&samples, "missing_total"));
    }

    #[test]
    fn reads_escaped_label_values_and_infinities() {
        let samples = parse(SCRAPE);
        let weird = samples.iter().find(|s| s.name == "weird").expect("parsed");
        assert_eq!(weird.label("path"), Some(r#"a "quoted", value\"#));
        assert_eq!(weird.label("x"), Some("1"));
        assert_eq!(weird.value, 25.0);
        assert_eq!(sum(&samples, "bucket_le", &[]), f64::INFINITY);
    }

    #[test]
    fn skips_comments_and_garbage() {
        let samples = parse(SCRAPE);
        assert_eq!(samples.len(), 6);
        assert!(parse("only_a_name\n{broken\nx{a=\"1\"\n").is_empty());
    }
}
