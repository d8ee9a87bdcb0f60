//! Running `nft`: one atomic transaction on stdin per change, the table as
//! the kernel holds it, and the learnt elements read back at start. These
//! wait on a process: call them from a blocking thread.

use super::ruleset::{self, RuleSet, TABLE};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use thiserror::Error;

/// The nft program (Debian's `nftables` package).
pub const NFT: &str = "nft";

/// Why the kernel's rules could not be read or changed.
#[derive(Debug, Error)]
pub enum NftError {
    #[error("cannot run {NFT} (install Debian's nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("{NFT} {what} failed: {message}{hint}")]
    Failed {
        what: &'static str,
        message: String,
        hint: &'static str,
    },
}

fn run(args: &[&str], input: Option<&str>, what: &'static str) -> Result<String, NftError> {
    let mut child = Command::new(NFT)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let hint = if message.contains("Operation not permitted") {
            " (transparent interception needs CAP_NET_ADMIN: run as root or grant the capability)"
        } else {
            ""
        };
        return Err(NftError::Failed { what, message, hint });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces erlmesh's table with `rules`, in one transaction.
pub fn apply(rules: &RuleSet) -> Result<(), NftError> {
    run(&["-f", "-"], Some(&rules.transaction()), "apply").map(|_| ())
}

/// Removes erlmesh's table; true when there was one.
pub fn remove() -> Result<bool, NftError> {
    let had = show()?.is_some();
    run(&["-f", "-"], Some(&ruleset::removal()), "remove")?;
    Ok(had)
}

/// erlmesh's table as the kernel lists it, if there is one.
pub fn show() -> Result<Option<String>, NftError> {
    let family_name: Vec<&str> = TABLE.split(' ').collect();
    match run(&["list", "table", family_name[0], family_name[1]], None, "list") {
        Ok(t) => Ok(Some(t)),
        Err(NftError::Failed { message, .. }) if message.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The learnt distribution ports in the kernel's table, (address, port):
/// an erlmesh that restarts keeps them, so its rules stay as they were.
pub fn learnt() -> Result<Vec<(IpAddr, u16)>, NftError> {
    let mut v = Vec::new();
    for set in ["dist4", "dist6"] {
        let out = match run(&["-j", "list", "set", "inet", "erlmesh", set], None, "list set") {
            Ok(o) => o,
            Err(NftError::Failed { message, .. }) if message.contains("No such file or directory") => continue,
            Err(e) => return Err(e),
        };
        v.extend(parse_learnt(&out));
    }
    Ok(v)
}

/// The (address . port) elements of one set in `nft -j` output; anything
/// else is skipped.
fn parse_learnt(json: &str) -> Vec<(IpAddr, u16)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    for item in items {
        let elems = item
            .get("set")
            .and_then(|s| s.get("elem"))
            .and_then(|e| e.as_array())
            .cloned()
            .unwrap_or_default();
        for e in elems {
            let Some(c) = e.get("concat").and_then(|c| c.as_array()) else {
                continue;
            };
            let ip = c
                .first()
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse::<IpAddr>().ok());
            let port = c.get(1).and_then(|p| p.as_u64()).and_then(|p| u16::try_from(p).ok());
            if let (Some(ip), Some(port)) = (ip, port) {
                out.push((ip, port));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn learnt_elements_are_read_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"set": {"family": "inet", "name": "dist4", "table": "erlmesh",
                     "type": ["ipv4_addr", "inet_service"], "handle": 4,
                     "elem": [{"concat": ["198.18.0.2", 41234]}, {"concat": ["198.18.0.3", 70000]}, "junk"]}}]}"#;
        assert_eq!(super::parse_learnt(json), vec![("198.18.0.2".parse().unwrap(), 41234)]);
        assert!(super::parse_learnt("not json").is_empty());
    }
}
