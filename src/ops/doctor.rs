//! `erlmesh doctor`: checks a host's setup and explains each problem with
//! its fix.

use crate::config::Config;
use crate::epmd::LocalEpmd;
use crate::ops::metrics::Metrics;
use crate::tls::{Tls, TlsConfigs};
use crate::tunnel::dial::Dialer;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// One check's outcome.
#[derive(Debug)]
pub struct Check {
    pub ok: bool,
    pub what: String,
    /// What to do about it, when not ok.
    pub fix: String,
}

fn pass(what: impl Into<String>) -> Check {
    Check {
        ok: true,
        what: what.into(),
        fix: String::new(),
    }
}

/// Passes when nothing listens on `port` beyond loopback; otherwise fails
/// with `exposed` of the addresses it listens on.
fn loopback_only(port: u16, ok: String, exposed: impl FnOnce(&[std::net::SocketAddr]) -> String, fix: &str) -> Check {
    let ex = crate::ops::exposure::exposed_listeners(port);
    if ex.is_empty() {
        pass(ok)
    } else {
        fail(exposed(&ex), fix)
    }
}

fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        ok: false,
        what: what.into(),
        fix: fix.into(),
    }
}

/// Runs every check for `config`; `node` names a running local node whose
/// name resolution is checked too (with `cookie`, or the node's default).
pub async fn run(config: &Config, node: Option<&str>, cookie: Option<&str>) -> Vec<Check> {
    let mut checks = vec![pass(format!("config {} is valid", config.file.display()))];

    // Certificates.
    let tls = check_certificates(config, &mut checks);
    // Peers.
    if let Some(tls) = &tls {
        check_peers(config, tls, &mut checks).await;
    }
    if config.interception == crate::config::Interception::Transparent {
        check_rules(config, &mut checks).await;
        return checks;
    }
    check_exposure(config, &mut checks).await;
    let aliases = check_resolver(config, &mut checks);
    // A running node's view of the peer hosts.
    if let Some(node) = node {
        checks.extend(check_node(config, node, cookie, &aliases).await);
    }
    checks
}

/// The certificate: chain, name, expiry. Returns the configs when they load.
fn check_certificates(config: &Config, checks: &mut Vec<Check>) -> Option<std::sync::Arc<crate::tls::Tls>> {
    let cert_fix = format!(
        "issue one with `erlmesh cert issue --dir DIR --host {}` and point tls.cert / tls.key at it",
        config.host
    );
    let tls = match TlsConfigs::load(&config.tls, &config.host) {
        Ok(t) => {
            checks.push(pass(format!(
                "certificate {} names {} and matches its key",
                config.tls.cert.display(),
                config.host
            )));
            Some(Tls::new(t))
        }
        Err(e) => {
            checks.push(fail(format!("certificate: {e}"), cert_fix.clone()));
            None
        }
    };
    if let Ok(chain) = crate::tls::load_certs(&config.tls.cert) {
        match crate::tls::certs::chains_to(
            &chain[0],
            &chain[1..],
            &config.tls.ca,
            rustls::pki_types::UnixTime::now(),
        ) {
            Ok(()) => checks.push(pass(format!(
                "certificate chains to the CA {}",
                config.tls.ca.display()
            ))),
            Err(e) => checks.push(fail(
                format!("certificate does not chain to the CA {}: {e}", config.tls.ca.display()),
                cert_fix.clone(),
            )),
        }
        if let Ok(na) = crate::tls::cert_not_after(&chain[0]) {
            let days = (na - crate::ops::metrics::now()) / crate::ops::metrics::SECS_PER_DAY;
            if days < 0 {
                checks.push(fail(
                    format!("certificate expired {} days ago", -days),
                    cert_fix.clone(),
                ));
            } else if days < crate::ops::metrics::EXPIRY_WARNING_DAYS {
                checks.push(fail(
                    format!("certificate expires in {days} days"),
                    cert_fix.clone() + ", then SIGHUP erlmesh",
                ));
            } else {
                checks.push(pass(format!("certificate valid for {days} more days")));
            }
        }
    }

    tls
}

/// Each peer: reachable, and authenticates as itself.
async fn check_peers(config: &Config, tls: &std::sync::Arc<crate::tls::Tls>, checks: &mut Vec<Check>) {
    for p in &config.peers {
        let d = match Dialer::new(&p.host, &p.address, tls.clone(), Metrics::new([])) {
            Ok(d) => d,
            Err(e) => {
                checks.push(fail(format!("peer {}: {e}", p.host), "fix peers[].host"));
                continue;
            }
        };
        match d.names().await {
            Ok(names) => checks.push(pass(format!(
                "peer {} at {} authenticates (TLS 1.3, certificate names {}); its nodes: {}",
                p.host,
                p.address,
                p.host,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ))),
            Err(e) => checks.push(fail(
                format!("peer {} at {}: {e}", p.host, p.address),
                "check that its erlmesh runs, that the address and port are right and open between the hosts, \
                     and that its certificate comes from the same CA and names that host",
            )),
        }
    }
}

/// EPMD and local nodes listen on loopback only.
async fn check_exposure(config: &Config, checks: &mut Vec<Check>) {
    checks.push(loopback_only(
        config.epmd_port,
        format!("EPMD port {} is not open beyond loopback", config.epmd_port),
        |ex| format!("EPMD port {} is open to the network on {ex:?}", config.epmd_port),
        "stop that epmd (systemctl disable --now epmd.socket epmd.service) or run it with ERL_EPMD_ADDRESS=127.0.0.1",
    ));
    match (LocalEpmd::System { port: config.epmd_port }).names().await {
        Ok(nodes) => {
            checks.push(pass(format!(
                "local EPMD answers on 127.0.0.1:{} ({} nodes)",
                config.epmd_port,
                nodes.len()
            )));
            for (n, port) in nodes {
                checks.push(loopback_only(
                    port,
                    format!("node {n}@{} listens on loopback only (port {port})", config.host),
                    |ex| {
                        format!(
                            "node {n}@{} listens beyond loopback on {ex:?}, outside TLS",
                            config.host
                        )
                    },
                    "start it with the environment of `erlmesh env` (-kernel inet_dist_use_interface {127,0,0,1})",
                ));
            }
        }
        Err(e) => checks.push(fail(
            format!("no EPMD answers on 127.0.0.1:{}: {e}", config.epmd_port),
            "start erlmesh (`erlmesh run`), or the system epmd when epmd = \"system\"",
        )),
    }
}

/// Transparent mode: the kernel's rules are in place and hold every peer
/// address and every local node's port, and erlmesh takes what they
/// redirect.
async fn check_rules(config: &Config, checks: &mut Vec<Check>) {
    use crate::transparent::{nft, resolve};
    let table = match tokio::task::spawn_blocking(nft::show).await {
        Ok(Ok(Some(t))) => {
            checks.push(pass("the rules are in place (nft table inet erlmesh)"));
            t
        }
        Ok(Ok(None)) => {
            checks.push(fail(
                "no rules: nft has no table inet erlmesh, so nodes' connections go out in the clear",
                "start erlmesh (it applies them), or `erlmesh rules apply --config FILE`",
            ));
            return;
        }
        Ok(Err(e)) => {
            checks.push(fail(
                format!("cannot read the rules: {e}"),
                "run doctor as root (CAP_NET_ADMIN)",
            ));
            return;
        }
        Err(e) => {
            checks.push(fail(format!("cannot read the rules: {e}"), "run doctor again"));
            return;
        }
    };
    for p in &config.peers {
        let addrs = resolve(&p.host).await;
        if addrs.is_empty() {
            checks.push(fail(
                format!("peer {} does not resolve here: nodes cannot dial it by name", p.host),
                "add the host to DNS or /etc/hosts, as for any Erlang cluster",
            ));
        }
        let missing: Vec<String> = addrs
            .iter()
            .map(|a| a.to_string())
            .filter(|a| !table.contains(a.as_str()))
            .collect();
        if missing.is_empty() {
            checks.push(pass(format!("peer {}: its addresses are redirected", p.host)));
        } else {
            checks.push(fail(
                format!(
                    "peer {}: {missing:?} not in the rules, out of step with the peer table",
                    p.host
                ),
                "erlmesh updates them within 30 s; otherwise restart it",
            ));
        }
    }
    if let Ok(nodes) = (LocalEpmd::System { port: config.epmd_port }).names().await {
        for (n, port) in nodes {
            if table.contains(&format!(" {port}")) {
                checks.push(pass(format!("node {n}: its port {port} is closed to the network")));
            } else {
                checks.push(fail(
                    format!("node {n}: its port {port} is not guarded yet"),
                    "erlmesh adds it within a second; is erlmesh running?",
                ));
            }
        }
    }
    let port = config.transparent.redirect_port;
    match tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
        Ok(_) => checks.push(pass(format!(
            "erlmesh takes redirected connections on 127.0.0.1:{port}"
        ))),
        Err(e) => checks.push(fail(
            format!("nothing takes redirected connections on 127.0.0.1:{port} ({e}): nodes get pang"),
            "start erlmesh",
        )),
    }
}

/// The resolver file maps this host and every peer. Returns the aliases
/// erlmesh keeps, for the running node's check.
fn check_resolver(config: &Config, checks: &mut Vec<Check>) -> Vec<(String, Option<Ipv4Addr>)> {
    let inetrc = config.inetrc_path();
    let aliases = read_aliases(config);
    match std::fs::read_to_string(&inetrc) {
        Ok(text) => {
            let missing: Vec<&str> = std::iter::once(config.host.as_str())
                .chain(config.peers.iter().map(|p| p.host.as_str()))
                .filter(|h| !text.contains(&format!("\"{h}\"")))
                .collect();
            if missing.is_empty() {
                checks.push(pass(format!(
                    "resolver file {} maps this host and every peer",
                    inetrc.display()
                )));
            } else {
                checks.push(fail(
                    format!("resolver file {} lacks {missing:?}", inetrc.display()),
                    "restart erlmesh with this config: it rewrites the file",
                ));
            }
        }
        Err(e) => checks.push(fail(
            format!("resolver file {}: {e}", inetrc.display()),
            "start erlmesh with this config: it writes the file",
        )),
    }

    aliases
}

/// The alias each peer has, as erlmesh keeps it in state_dir.
fn read_aliases(config: &Config) -> Vec<(String, Option<Ipv4Addr>)> {
    let text = std::fs::read_to_string(config.state_dir.join(crate::mesh::alias::ALIASES_FILE)).unwrap_or_default();
    config
        .peers
        .iter()
        .map(|p| {
            let kept = text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(h, _)| p.host == *h)
                .and_then(|(_, ip)| ip.trim().parse().ok());
            (p.host.to_string(), p.alias.or(kept))
        })
        .collect()
}

/// Asks the running node `node` (through a short-lived helper node with the
/// environment of `erlmesh env`) what each peer host resolves to.
async fn check_node(
    config: &Config,
    node: &str,
    cookie: Option<&str>,
    aliases: &[(String, Option<Ipv4Addr>)],
) -> Vec<Check> {
    let full = if node.contains('@') {
        node.to_owned()
    } else {
        format!("{node}@{}", config.host)
    };
    let hosts: Vec<String> = aliases.iter().map(|(h, _)| format!("\"{h}\"")).collect();
    let script = format!(
        "R = [{{H, rpc:call('{full}', inet, getaddr, [H, inet], 5000)}} || H <- [{}]], \
         io:format(\"~p.~n\", [R]), halt().",
        hosts.join(",")
    );
    let flag = if config.host.contains('.') { "-name" } else { "-sname" };
    let me = format!("doctor{}@{}", std::process::id(), config.host);
    let mut cmd = tokio::process::Command::new("erl");
    cmd.args(["-noshell", "-hidden", flag, &me]);
    if let Some(c) = cookie {
        cmd.args(["-setcookie", c]);
    }
    cmd.args(["-eval", &script]);
    cmd.env("ERL_INETRC", config.inetrc_path())
        .env("ERL_EPMD_PORT", config.epmd_port.to_string());
    cmd.env(
        "ERL_ZFLAGS",
        "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
    );
    cmd.kill_on_drop(true);
    let out = match tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(Err(e)) => {
            return vec![fail(
                format!("cannot run erl to ask {full}: {e}"),
                "install Erlang on this host",
            )]
        }
        Err(_) => {
            return vec![fail(
                format!("asking {full} took over 30 s"),
                "check that the node runs",
            )]
        }
    };
    let mut checks = Vec::new();
    for (h, alias) in aliases {
        let want = alias.map(|a| {
            let o = a.octets();
            format!("{{\"{h}\",{{ok,{{{},{},{},{}}}}}}}", o[0], o[1], o[2], o[3])
        });
        let flat: String = out.chars().filter(|c| !c.is_whitespace()).collect();
        match want {
            Some(w) if flat.contains(&w) => {
                checks.push(pass(format!(
                    "{full} resolves {h} to its alias {}",
                    alias.map(|a| a.to_string()).unwrap_or_default()
                )));
            }
            _ if flat.contains("badrpc") || !flat.contains(&format!("\"{h}\"")) => {
                let mut fix = String::from("check the node's name and cookie (--cookie)");
                let _ = write!(fix, "; the helper printed: {}", out.trim());
                checks.push(fail(format!("cannot ask {full} how it resolves {h}"), fix));
                break;
            }
            _ => checks.push(fail(
                format!(
                    "{full} does not resolve {h} to its alias {alias:?} (it says {})",
                    out.trim()
                ),
                "restart the node with the environment of `eval \"$(erlmesh env --config FILE)\"` (ERL_INETRC)",
            )),
        }
    }
    checks
}

/// The report: one line per check, the fix under each failure.
pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let _ = writeln!(s, "{} {}", if c.ok { "[ok]  " } else { "[FAIL]" }, c.what);
        if !c.ok {
            let _ = writeln!(s, "       fix: {}", c.fix);
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    let _ = writeln!(s, "\n{} checks, {} failed", checks.len(), failed);
    s
}
