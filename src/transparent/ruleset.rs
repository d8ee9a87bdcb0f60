//! The nftables ruleset of transparent interception, as text for `nft -f`:
//! pure, so that every shape is tested without root.
//!
//! One table of erlmesh's own, `inet erlmesh` (IPv4 and IPv6 in one):
//!
//! - `intercept` (nat, output, priority -100): local nodes' new connections
//!   to a peer host's address on the EPMD port, or on a distribution port
//!   learnt from that peer's EPMD answers, go to erlmesh's redirect port
//!   on loopback. erlmesh's own sockets (marked) and connections to this
//!   host's own addresses (`fib daddr type local`) are left alone, so nodes
//!   on one host talk directly, and nothing else to a peer (ssh, HTTP) is
//!   touched.
//! - `guard` (filter, input, priority 0): from anywhere but loopback, new
//!   connections to the EPMD port and to local nodes' distribution ports
//!   are dropped, and packets of older ones are answered with a reset (so
//!   plaintext connections made before the rules are cut and re-form
//!   through erlmesh).
//! - `guard_out` (filter, output, priority 0): a packet leaving for the
//!   network from the EPMD port or a local node's port, or for a peer's
//!   distribution port without going through erlmesh (a connection older
//!   than the rules), resets its local socket instead of leaving: no byte
//!   of an older plaintext connection crosses the network once the rules
//!   are in.
//!
//! The text replaces the whole table in one transaction (`table` then
//! `delete table` then the definition: nft applies the file atomically),
//! so applying it twice leaves the same ruleset and nothing outside the
//! table is touched.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

/// The table's family and name.
pub const TABLE: &str = "inet erlmesh";

/// Everything the ruleset is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// The port nodes ask EPMD on (on every host).
    pub epmd_port: u16,
    /// erlmesh's redirect listener, on 127.0.0.1 and ::1.
    pub redirect_port: u16,
    /// The mark on erlmesh's own sockets.
    pub mark: u32,
    /// A fixed distribution port range, redirected and guarded whole.
    pub dist_ports: Option<(u16, u16)>,
    /// Peer hosts' addresses.
    pub peers: BTreeSet<IpAddr>,
    /// (peer address, distribution port) learnt from EPMD answers.
    pub dist: BTreeSet<(IpAddr, u16)>,
    /// Distribution ports of this host's nodes.
    pub local_dist: BTreeSet<u16>,
}

impl RuleSet {
    /// The table's definition.
    pub fn render(&self) -> String {
        let mut t = format!("table {TABLE} {{\n");
        let v4 = |a: &&IpAddr| a.is_ipv4();
        let v6 = |a: &&IpAddr| a.is_ipv6();
        set(
            &mut t,
            "peers4",
            "ipv4_addr",
            self.peers.iter().filter(v4).map(|a| a.to_string()),
        );
        set(
            &mut t,
            "peers6",
            "ipv6_addr",
            self.peers.iter().filter(v6).map(|a| a.to_string()),
        );
        let pair = |(a, p): &(IpAddr, u16)| format!("{a} . {p}");
        set(
            &mut t,
            "dist4",
            "ipv4_addr . inet_service",
            self.dist.iter().filter(|(a, _)| a.is_ipv4()).map(pair),
        );
        set(
            &mut t,
            "dist6",
            "ipv6_addr . inet_service",
            self.dist.iter().filter(|(a, _)| a.is_ipv6()).map(pair),
        );
        set(
            &mut t,
            "local_dist",
            "inet_service",
            self.local_dist.iter().map(|p| p.to_string()),
        );

        let (epmd, to) = (self.epmd_port, self.redirect_port);
        t.push_str("\tchain intercept {\n\t\ttype nat hook output priority -100; policy accept;\n");
        let _ = writeln!(t, "\t\tmeta mark {:#010x} return", self.mark);
        t.push_str("\t\tfib daddr type local return\n");
        for ip in ["ip", "ip6"] {
            let n = if ip == "ip" { "4" } else { "6" };
            let _ = writeln!(t, "\t\t{ip} daddr @peers{n} tcp dport {epmd} redirect to :{to}");
            let _ = writeln!(t, "\t\t{ip} daddr . tcp dport @dist{n} redirect to :{to}");
            if let Some((lo, hi)) = self.dist_ports {
                let _ = writeln!(t, "\t\t{ip} daddr @peers{n} tcp dport {lo}-{hi} redirect to :{to}");
            }
        }
        t.push_str("\t}\n");

        t.push_str("\tchain guard {\n\t\ttype filter hook input priority 0; policy accept;\n");
        t.push_str("\t\tiifname \"lo\" accept\n");
        let mut guarded = vec![epmd.to_string(), "@local_dist".to_owned()];
        if let Some((lo, hi)) = self.dist_ports {
            guarded.push(format!("{lo}-{hi}"));
        }
        for g in &guarded {
            let _ = writeln!(t, "\t\ttcp dport {g} ct state new drop");
            let _ = writeln!(t, "\t\ttcp dport {g} reject with tcp reset");
        }
        t.push_str("\t}\n");

        // What leaves for the network from a guarded port, or for a peer's
        // distribution port outside erlmesh (a connection older than the
        // rules): its local socket is reset before a byte goes out.
        t.push_str("\tchain guard_out {\n\t\ttype filter hook output priority 0; policy accept;\n");
        t.push_str("\t\toifname \"lo\" accept\n");
        let _ = writeln!(t, "\t\tmeta mark {:#010x} accept", self.mark);
        for g in &guarded {
            let _ = writeln!(t, "\t\ttcp sport {g} reject with tcp reset");
        }
        for ip in ["ip", "ip6"] {
            let n = if ip == "ip" { "4" } else { "6" };
            let _ = writeln!(t, "\t\t{ip} daddr . tcp dport @dist{n} reject with tcp reset");
            if let Some((lo, hi)) = self.dist_ports {
                let _ = writeln!(t, "\t\t{ip} daddr @peers{n} tcp dport {lo}-{hi} reject with tcp reset");
            }
        }
        t.push_str("\t}\n}\n");
        t
    }

    /// The `nft -f` input that replaces the table with this one, atomically.
    pub fn transaction(&self) -> String {
        format!("table {TABLE}\ndelete table {TABLE}\n{}", self.render())
    }
}

/// The `nft -f` input that removes the table (and succeeds when it is not there).
pub fn removal() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

fn set(t: &mut String, name: &str, kind: &str, elements: impl Iterator<Item = String>) {
    let elements: Vec<String> = elements.collect();
    let _ = writeln!(t, "\tset {name} {{\n\t\ttype {kind}");
    if !elements.is_empty() {
        let _ = writeln!(t, "\t\telements = {{ {} }}", elements.join(", "));
    }
    t.push_str("\t}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RuleSet {
        RuleSet {
            epmd_port: 4369,
            redirect_port: 4371,
            mark: 0x4d45,
            ..RuleSet::default()
        }
    }

    #[test]
    fn ipv4_peers_and_learnt_ports() {
        let mut r = base();
        r.peers.insert("198.18.0.2".parse().unwrap());
        r.peers.insert("198.18.0.3".parse().unwrap());
        r.dist.insert(("198.18.0.2".parse().unwrap(), 41234));
        r.local_dist.insert(39001);
        let t = r.render();
        assert!(t.starts_with("table inet erlmesh {\n"), "{t}");
        assert!(
            t.contains("set peers4 {\n\t\ttype ipv4_addr\n\t\telements = { 198.18.0.2, 198.18.0.3 }\n\t}"),
            "{t}"
        );
        assert!(
            t.contains("set peers6 {\n\t\ttype ipv6_addr\n\t}"),
            "an empty set has no elements line: {t}"
        );
        assert!(t.contains("elements = { 198.18.0.2 . 41234 }"), "{t}");
        assert!(t.contains("elements = { 39001 }"), "{t}");
        // Order matters: erlmesh's own sockets and local addresses first.
        let mark = t.find("meta mark 0x00004d45 return").unwrap();
        let local = t.find("fib daddr type local return").unwrap();
        let epmd = t.find("ip daddr @peers4 tcp dport 4369 redirect to :4371").unwrap();
        let dist = t.find("ip daddr . tcp dport @dist4 redirect to :4371").unwrap();
        assert!(mark < local && local < epmd && epmd < dist, "{t}");
        let lo = t.find("iifname \"lo\" accept").unwrap();
        let drop = t.find("tcp dport 4369 ct state new drop").unwrap();
        let reset = t.find("tcp dport 4369 reject with tcp reset").unwrap();
        assert!(lo < drop && drop < reset, "{t}");
        assert!(t.contains("tcp dport @local_dist ct state new drop"), "{t}");
        let out = t.find("chain guard_out {").unwrap();
        let out_lo = t.find("oifname \"lo\" accept").unwrap();
        let own = t.find("meta mark 0x00004d45 accept").unwrap();
        let sport = t.find("tcp sport @local_dist reject with tcp reset").unwrap();
        let older = t.find("ip daddr . tcp dport @dist4 reject with tcp reset").unwrap();
        assert!(out < out_lo && out_lo < own && own < sport && sport < older, "{t}");
        assert!(t.contains("tcp sport 4369 reject with tcp reset"), "{t}");
        assert!(!t.contains("9100"), "{t}");
    }

    #[test]
    fn ipv6_and_dual_stack() {
        let mut r = base();
        r.peers.insert("2001:2::2".parse().unwrap());
        r.peers.insert("198.18.0.2".parse().unwrap());
        r.dist.insert(("2001:2::2".parse().unwrap(), 40000));
        r.dist.insert(("198.18.0.2".parse().unwrap(), 40000));
        let t = r.render();
        assert!(t.contains("type ipv6_addr\n\t\telements = { 2001:2::2 }"), "{t}");
        assert!(t.contains("type ipv4_addr\n\t\telements = { 198.18.0.2 }"), "{t}");
        assert!(
            t.contains("type ipv6_addr . inet_service\n\t\telements = { 2001:2::2 . 40000 }"),
            "{t}"
        );
        assert!(
            t.contains("type ipv4_addr . inet_service\n\t\telements = { 198.18.0.2 . 40000 }"),
            "{t}"
        );
        assert!(t.contains("ip6 daddr @peers6 tcp dport 4369 redirect to :4371"), "{t}");
        assert!(t.contains("ip6 daddr . tcp dport @dist6 redirect to :4371"), "{t}");
    }

    #[test]
    fn a_fixed_range_is_redirected_and_guarded_whole() {
        let mut r = base();
        r.dist_ports = Some((9100, 9155));
        let t = r.render();
        assert!(
            t.contains("ip daddr @peers4 tcp dport 9100-9155 redirect to :4371"),
            "{t}"
        );
        assert!(
            t.contains("ip6 daddr @peers6 tcp dport 9100-9155 redirect to :4371"),
            "{t}"
        );
        assert!(t.contains("tcp dport 9100-9155 ct state new drop"), "{t}");
        assert!(t.contains("tcp dport 9100-9155 reject with tcp reset"), "{t}");
        assert!(t.contains("tcp sport 9100-9155 reject with tcp reset"), "{t}");
        assert!(
            t.contains("ip6 daddr @peers6 tcp dport 9100-9155 reject with tcp reset"),
            "{t}"
        );
    }

    #[test]
    fn the_transaction_replaces_only_erlmesh_s_table() {
        let t = base().transaction();
        assert!(
            t.starts_with("table inet erlmesh\ndelete table inet erlmesh\ntable inet erlmesh {\n"),
            "{t}"
        );
        // Every table named is erlmesh's.
        for line in t.lines().filter(|l| l.contains("table")) {
            assert!(line.contains("table inet erlmesh"), "{line}");
        }
        assert_eq!(removal(), "table inet erlmesh\ndelete table inet erlmesh\n");
    }
}
