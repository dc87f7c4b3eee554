//! Which Keep services a block goes to, and in what order.
//!
//! Services come from the Arvados API (`GET /arvados/v1/keep_services/accessible`, as every Arvados client finds
//! them) or from a fixed list of URLs (`ARVADOS_KEEP_SERVICES`, as crunch-run sets inside containers). Each
//! block has its own order of services, the rendezvous order all Keep clients share (the Go SDK's
//! `root_sorter.go`): heaviest first by `md5(block md5 hex + the service UUID's last 15 characters)`. Writers and
//! readers agree on it without talking, so a block is looked for first where it was written.

use crate::locator::{Locator, hex, md5};

/// One Keep service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub uuid: String,
    /// `http[s]://host:port`, no trailing slash.
    pub root: String,
    /// A keepproxy (or any service that is not a keepstore): it writes every replica a PUT asks for itself.
    pub proxy: bool,
    pub read_only: bool,
}

/// One item of `keep_services/accessible`.
#[derive(Debug, serde::Deserialize)]
struct Item {
    uuid: String,
    service_host: String,
    service_port: u16,
    #[serde(default)]
    service_ssl_flag: bool,
    #[serde(default)]
    service_type: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, serde::Deserialize)]
struct List {
    items: Vec<Item>,
}

/// The services of a `keep_services/accessible` answer (a service listed twice counts once).
pub fn parse_accessible(body: &[u8]) -> Result<Vec<Service>, String> {
    let list: List = serde_json::from_slice(body).map_err(|e| format!("keep_services/accessible: {e}"))?;
    let mut out: Vec<Service> = Vec::new();
    for i in list.items {
        let scheme = if i.service_ssl_flag { "https" } else { "http" };
        let host = if i.service_host.contains(':') && !i.service_host.starts_with('[') {
            format!("[{}]", i.service_host)
        } else {
            i.service_host
        };
        let root = format!("{scheme}://{host}:{}", i.service_port);
        if out.iter().any(|s| s.root == root) {
            continue;
        }
        out.push(Service { uuid: i.uuid, root, proxy: i.service_type != "disk", read_only: i.read_only });
    }
    if out.is_empty() {
        return Err("keep_services/accessible lists no Keep service".into());
    }
    Ok(out)
}

/// Services from a fixed list of URLs (space-separated, as `ARVADOS_KEEP_SERVICES`). As the Go SDK does, each
/// gets the UUID `00000-bi6l4-<its index, 15 digits>` and is taken to write every replica it is asked for.
pub fn fixed(urls: &[String]) -> Result<Vec<Service>, String> {
    if urls.is_empty() {
        return Err("no Keep service URL given".into());
    }
    urls.iter()
        .enumerate()
        .map(|(i, u)| {
            let root = u.trim_end_matches('/');
            if !(root.starts_with("http://") || root.starts_with("https://")) {
                return Err(format!("Keep service {u:?} must start with http:// or https://"));
            }
            Ok(Service { uuid: format!("00000-bi6l4-{i:015}"), root: root.to_string(), proxy: true, read_only: false })
        })
        .collect()
}

/// The rendezvous weight of `service` for the block whose MD5 is `md5hex`.
fn weight(md5hex: &str, uuid: &str) -> [u8; 16] {
    // The Go SDK hashes the UUID's last 15 characters when it has the 27 of an Arvados UUID, else all of it.
    let tail = if uuid.len() == 27 { &uuid[12..] } else { uuid };
    md5(format!("{md5hex}{tail}").as_bytes())
}

/// `services` in the block's rendezvous order, heaviest first.
pub fn order<'a>(services: &'a [Service], locator: &Locator) -> Vec<&'a Service> {
    let md5hex = hex(locator.md5());
    let mut weighted: Vec<(String, &Service)> = services.iter().map(|s| (hex(&weight(&md5hex, &s.uuid)), s)).collect();
    // The weights compare as hex text, as the Go SDK compares them: the same as comparing the digests.
    weighted.sort_by(|a, b| b.0.cmp(&a.0));
    weighted.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessible_lists_parse_with_schemes_and_types() {
        let body = br#"{"kind":"arvados#keepServiceList","items":[
            {"uuid":"zzzzz-bi6l4-000000000000000","service_host":"keep0","service_port":25107,
             "service_ssl_flag":false,"service_type":"disk","read_only":false},
            {"uuid":"zzzzz-bi6l4-000000000000001","service_host":"::1","service_port":443,
             "service_ssl_flag":true,"service_type":"proxy","read_only":true},
            {"uuid":"zzzzz-bi6l4-000000000000002","service_host":"keep0","service_port":25107,
             "service_ssl_flag":false,"service_type":"disk"}]}"#;
        let s = parse_accessible(body).unwrap();
        assert_eq!(s.len(), 2, "the same root counts once");
        assert_eq!((s[0].root.as_str(), s[0].proxy, s[0].read_only), ("http://keep0:25107", false, false));
        assert_eq!((s[1].root.as_str(), s[1].proxy, s[1].read_only), ("https://[::1]:443", true, true));
        assert!(parse_accessible(br#"{"items":[]}"#).is_err());
        assert!(parse_accessible(b"<html>").is_err());
    }

    #[test]
    fn fixed_lists_get_the_go_sdk_uuids() {
        let s = fixed(&["http://a:1/".into(), "https://b:2".into()]).unwrap();
        assert_eq!(s[0].uuid, "00000-bi6l4-000000000000000");
        assert_eq!(s[1].uuid, "00000-bi6l4-000000000000001");
        assert_eq!(s[0].root, "http://a:1");
        assert!(fixed(&["ftp://a".into()]).is_err());
        assert!(fixed(&[]).is_err());
    }

    #[test]
    fn rendezvous_order_is_the_keep_clients_order() {
        // The reference probe orders of the Arvados SDKs' tests (root_sorter_test.go, test_keep_client.py):
        // sixteen services `zzzzz-bi6l4-<i, 15 hex digits>`, blocks named by md5 of `i` as 64 hex digits.
        let services: Vec<Service> = (0..16u64)
            .map(|i| Service {
                uuid: format!("zzzzz-bi6l4-{i:015x}"),
                root: format!("https://{i:x}.svc"),
                proxy: false,
                read_only: false,
            })
            .collect();
        for (h, want) in
            ["3eab2d5fc9681074", "097dba52e648f1c3", "c5b4e023f8a7d691", "9d81c02e76a3bf54"].iter().enumerate()
        {
            let block = Locator::from_parts(md5(format!("{h:064x}").as_bytes()), 0);
            let got: String = order(&services, &block).iter().map(|s| &s.root[8..9]).collect();
            assert_eq!(got, *want, "block {h}");
        }
    }
}
