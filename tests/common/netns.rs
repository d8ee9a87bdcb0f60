//! Hosts in network namespaces on one bridge: IPv4 198.18.NET.I/24 and
//! IPv6 2001:2:0:NET::I/64 (test ranges), each namespace's /etc/hosts, and
//! a guard that ends every process left in them (epmd daemons the nodes
//! start, included) and deletes them.

use super::{wait_for, Cluster, Proc};
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8) from iproute2");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces made for this test; on drop, every process still in them is
/// killed and they are deleted (their veths go with them).
pub struct Netns {
    pub names: Vec<String>,
}

impl Netns {
    /// Every process running in namespace `ns`.
    pub fn pids(ns: &str) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "pids", ns]).output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let pids = Netns::pids(n);
            if !pids.is_empty() {
                let _ = Command::new("kill").arg("-9").args(&pids).status();
            }
            let _ = Command::new("ip").args(["netns", "del", n]).status();
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{n}"));
        }
    }
}

/// The IPv6 address of host `i` (0-based) on network `net`.
pub fn v6(net: u32, i: usize) -> String {
    format!("2001:2:0:{net:x}::{}", i + 1)
}

/// A bridge namespace and `hosts` namespaces on it, at 198.18.NET.1.. and
/// 2001:2:0:NET::1.. in order; returns the guard and the IPv4 addresses.
/// The guard's first name is the bridge's namespace.
pub fn lan(tag: &str, net: u32, hosts: &[&str]) -> (Netns, Vec<String>) {
    let sw = format!("{tag}-sw");
    let mut guard = Netns {
        names: vec![sw.clone()],
    };
    ip(&["netns", "add", &sw]);
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &sw, "link", "set", "br0", "up"]);
    let mut addrs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let ns = format!("{tag}-{h}");
        guard.names.push(ns.clone());
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let port = format!("p{i}");
        ip(&[
            "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
        let addr = format!("198.18.{net}.{}", i + 1);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ip(&[
            "-n",
            &ns,
            "-6",
            "addr",
            "add",
            &format!("{}/64", v6(net, i)),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        addrs.push(addr);
    }
    (guard, addrs)
}

/// Writes every host namespace's /etc/hosts (what `ip netns exec` shows
/// it) with `lines` ("ADDRESS NAME..." each) after localhost.
pub fn hosts_file(guard: &Netns, lines: &[String]) {
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    for ns in &guard.names[1..] {
        std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
        std::fs::write(format!("/etc/netns/{ns}/hosts"), &text).unwrap();
    }
}

/// A capture of every frame on the bridge, stopped (and flushed) on drop
/// of the returned process.
pub fn capture(c: &Cluster, sw: &str, name: &str) -> (Proc, std::path::PathBuf) {
    let pcap = c.path().join(format!("{name}.pcap"));
    let err = c.path().join(format!("{name}.err"));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            sw,
            "tcpdump",
            "-i",
            "any",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("tcpdump");
    let p = Proc {
        child,
        what: "tcpdump".into(),
    };
    let started = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(20), || started().contains("listening on")),
        "tcpdump: {}",
        started()
    );
    (p, pcap)
}

/// The packets of a capture that match a tcpdump filter, one per line.
pub fn packets(pcap: &std::path::Path, filter: &str) -> Vec<String> {
    let out = Command::new("tcpdump")
        .arg("-nr")
        .arg(pcap)
        .arg(filter)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
