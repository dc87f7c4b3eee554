//! `fsctl stats`: cafsd's metrics in a terminal: the same samples a Prometheus scrape gets (through the gRPC
//! API, so no metrics endpoint needs to be configured), with each latency histogram shown as its count and mean.

use super::*;

/// A sample line of the OpenMetrics text: `name{labels} value`.
fn sample(line: &str) -> Option<(&str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (name, value) = line.rsplit_once(' ')?;
    Some((name, value.parse().ok()?))
}

/// The samples worth reading: no histogram buckets.
fn samples(text: &str) -> Vec<(&str, f64)> {
    text.lines().filter_map(sample).filter(|(name, _)| !name.contains("_bucket{")).collect()
}

pub async fn show(mut c: Client, raw: bool, json: bool) -> Result<(), Failure> {
    let text = c.metrics(pb::MetricsRequest {}).await?.into_inner().text;
    if raw {
        print!("{text}");
        return Ok(());
    }
    let all = samples(&text);
    if json {
        let map: serde_json::Map<String, serde_json::Value> =
            all.iter().map(|(name, v)| (name.to_string(), json!(v))).collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    let width = all.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, value) in &all {
        // A histogram's sum and count read better as a count and a mean.
        if let Some(base) = name.strip_suffix("}").and_then(|n| n.split_once("_sum{")) {
            let count_name = format!("{}_count{{{}}}", base.0, base.1);
            if let Some((_, count)) = all.iter().find(|(n, _)| *n == count_name) {
                let mean = if *count > 0.0 { value / count } else { 0.0 };
                println!("{:width$}  mean {}", format!("{}_mean{{{}}}", base.0, base.1), seconds(mean));
            }
            continue;
        }
        println!("{name:width$}  {value}");
    }
    Ok(())
}

/// Seconds in the unit that reads best.
fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_skip_comments_and_buckets() {
        let text = "# TYPE cafs_x counter\ncafs_x_total{op=\"write\"} 3\ncafs_t_bucket{le=\"0.1\",op=\"a\"} 1\n\
                    cafs_t_sum{op=\"a\"} 0.5\ncafs_t_count{op=\"a\"} 2\ncafs_mounts 1\n# EOF\n";
        assert_eq!(
            samples(text),
            [
                ("cafs_x_total{op=\"write\"}", 3.0),
                ("cafs_t_sum{op=\"a\"}", 0.5),
                ("cafs_t_count{op=\"a\"}", 2.0),
                ("cafs_mounts", 1.0)
            ]
        );
        assert_eq!(seconds(0.25), "250.00 ms");
        assert_eq!(seconds(2e-5), "20.0 µs");
    }
}
