//! The source-NAT rules of a network namespace, read from `nft -j list ruleset` (nftables'
//! JSON, libnftables-json(5)); iptables-nft rules appear there too. Only what sizes a NAT pool
//! is kept: the statement (snat or masquerade), its addresses, its port range and its flags
//! (`random`, `fully-random`, `persistent`).

use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::conntrack::NatPortRange;

/// One snat/masquerade statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRule {
    /// Table family and name, e.g. "ip plnat".
    pub table: String,
    /// Chain name.
    pub chain: String,
    /// "snat" or "masquerade".
    pub kind: String,
    /// The `to` addresses as nft prints them ("127.0.0.1", "10.0.0.1-10.0.0.3"); `None` for
    /// masquerade (the outgoing interface's address).
    pub addr: Option<String>,
    /// The `to :LOW-HIGH` port range; `None` = the kernel default (1024–65535 for source
    /// ports ≥ 1024, with port preservation where possible).
    pub ports: Option<NatPortRange>,
    /// Flags: random, fully-random, persistent.
    pub flags: Vec<String>,
}

/// Errors reading the rules.
#[derive(Debug, thiserror::Error)]
pub enum NatRulesError {
    /// `nft` is not installed.
    #[error("nft not found: install nftables to read the NAT rules (pools are then sized by the kernel default 1024-65535)")]
    NftMissing,
    /// `nft` failed.
    #[error("nft -j list ruleset failed: {0}")]
    Nft(String),
    /// Its output was not the JSON expected.
    #[error("nft -j list ruleset printed unexpected JSON: {0}")]
    Json(String),
}

/// Runs `nft -j list ruleset` in the caller's network namespace and returns its NAT rules.
///
/// # Errors
/// [`NatRulesError`].
pub fn read_nat_rules() -> Result<Vec<NatRule>, NatRulesError> {
    let output = Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NatRulesError::NftMissing,
            _ => NatRulesError::Nft(e.to_string()),
        })?;
    if !output.status.success() {
        return Err(NatRulesError::Nft(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    parse_nat_rules(&String::from_utf8_lossy(&output.stdout))
}

/// Parses the JSON of `nft -j list ruleset`.
///
/// # Errors
/// [`NatRulesError::Json`] when the text is not JSON or has no `nftables` array.
pub fn parse_nat_rules(json: &str) -> Result<Vec<NatRule>, NatRulesError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| NatRulesError::Json(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or_else(|| NatRulesError::Json("no \"nftables\" array".to_string()))?;
    let mut out = Vec::new();
    for item in items {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let text = |k: &str| rule.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let table = format!("{} {}", text("family"), text("table"));
        let chain = text("chain").to_string();
        let Some(exprs) = rule.get("expr").and_then(|v| v.as_array()) else {
            continue;
        };
        for expr in exprs {
            for kind in ["snat", "masquerade"] {
                if let Some(stmt) = expr.get(kind) {
                    out.push(NatRule {
                        table: table.clone(),
                        chain: chain.clone(),
                        kind: kind.to_string(),
                        addr: stmt.get("addr").and_then(addr_text),
                        ports: stmt.get("port").and_then(port_range),
                        flags: flags(stmt.get("flags")),
                    });
                }
            }
        }
    }
    Ok(out)
}

fn addr_text(v: &serde_json::Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_string());
    }
    let range = v.get("range")?.as_array()?;
    let (a, b) = (range.first()?.as_str()?, range.get(1)?.as_str()?);
    Some(format!("{a}-{b}"))
}

fn port_range(v: &serde_json::Value) -> Option<NatPortRange> {
    let port = |v: &serde_json::Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    if let Some(p) = port(v) {
        return Some(NatPortRange { low: p, high: p });
    }
    let range = v.get("range")?.as_array()?;
    let (low, high) = (port(range.first()?)?, port(range.get(1)?)?);
    (low <= high).then_some(NatPortRange { low, high })
}

fn flags(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The output of nft 1.0.6 for four rules (trimmed to the rule objects).
    const RULESET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
 {"table": {"family": "ip", "name": "plnat", "handle": 1}},
 {"rule": {"family": "ip", "table": "plnat", "chain": "post", "handle": 3, "expr": [
   {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "127.0.0.2"}},
   {"snat": {"addr": "127.0.0.1", "port": {"range": [40000, 40099]}}}]}},
 {"rule": {"family": "ip", "table": "plnat", "chain": "post", "handle": 4, "expr": [
   {"masquerade": {"port": {"range": [40000, 40099]}, "flags": "fully-random"}}]}},
 {"rule": {"family": "ip", "table": "plnat", "chain": "post", "handle": 5, "expr": [
   {"masquerade": null}]}},
 {"rule": {"family": "ip", "table": "plnat", "chain": "post", "handle": 6, "expr": [
   {"snat": {"addr": {"range": ["127.0.0.11", "127.0.0.13"]}, "port": 41000, "flags": ["persistent", "random"]}}]}}
]}"#;

    #[test]
    fn reads_snat_and_masquerade_statements() {
        let rules = parse_nat_rules(RULESET).unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].kind, "snat");
        assert_eq!(rules[0].addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            rules[0].ports,
            Some(NatPortRange {
                low: 40000,
                high: 40099
            })
        );
        assert_eq!(rules[1].flags, vec!["fully-random"]);
        assert_eq!(rules[2].ports, None);
        assert_eq!(rules[2].addr, None);
        assert_eq!(rules[3].addr.as_deref(), Some("127.0.0.11-127.0.0.13"));
        assert_eq!(
            rules[3].ports,
            Some(NatPortRange {
                low: 41000,
                high: 41000
            })
        );
        assert_eq!(rules[3].flags, vec!["persistent", "random"]);
        assert_eq!(rules[0].table, "ip plnat");
    }

    #[test]
    fn empty_output_means_no_rules_and_garbage_is_an_error() {
        assert!(parse_nat_rules("").unwrap().is_empty());
        assert!(parse_nat_rules("{not json").is_err());
        assert!(parse_nat_rules("{\"x\": 1}").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_text(text in ".{0,400}") {
            let _ = parse_nat_rules(&text);
        }

        #[test]
        fn never_panics_on_odd_statements(low in 0u64..70000, high in 0u64..70000, flag in "[a-z-]{0,12}") {
            let json = format!(
                r#"{{"nftables":[{{"rule":{{"family":"ip","table":"t","chain":"c","expr":[{{"snat":{{"addr":7,"port":{{"range":[{low},{high}]}},"flags":"{flag}"}}}}]}}}}]}}"#
            );
            let rules = parse_nat_rules(&json).unwrap();
            if let Some(r) = rules[0].ports {
                proptest::prop_assert!(r.low <= r.high);
            }
        }
    }
}
