//! The resolver file local nodes read through `ERL_INETRC`: this host's own
//! name maps to 127.0.0.1, each peer host to its alias.

use std::net::Ipv4Addr;
use std::path::Path;

/// The resolver file's name under state_dir.
pub const INETRC_FILE: &str = "inetrc";
/// The hosts file's name under state_dir.
pub const HOSTS_FILE: &str = "hosts";

/// Renders the resolver file. `file` comes first in `lookup` so that even
/// an IP-literal host part is looked up in the table (DESIGN.md §2). A node
/// reads it once, at start; hosts learnt later reach running nodes through
/// `hosts_file`, which OTP re-reads when it changes.
pub fn render(own_host: &str, peers: &[(String, Ipv4Addr)], hosts_file: &Path) -> String {
    let mut s = String::from("%% Written by erlmesh; replaced whenever its peers change. Do not edit.\n");
    s.push_str(&format!(
        "{{hosts_file, {}}}.\n",
        quote(&hosts_file.display().to_string())
    ));
    s.push_str(&format!("{{host, {{127,0,0,1}}, [{}]}}.\n", quote(own_host)));
    for (host, ip) in peers {
        let o = ip.octets();
        s.push_str(&format!(
            "{{host, {{{},{},{},{}}}, [{}]}}.\n",
            o[0],
            o[1],
            o[2],
            o[3],
            quote(host)
        ));
    }
    s.push_str("{lookup, [file, native]}.\n");
    s
}

/// Renders the hosts file (/etc/hosts format) with the same entries.
pub fn render_hosts(own_host: &str, peers: &[(String, Ipv4Addr)]) -> String {
    let mut s = String::from("# Written by erlmesh; replaced whenever its peers change. Do not edit.\n");
    s.push_str(&format!("127.0.0.1 {own_host}\n"));
    for (host, ip) in peers {
        s.push_str(&format!("{ip} {host}\n"));
    }
    s
}

/// An Erlang string literal (host names are checked to need no escapes,
/// but the file must stay readable whatever it is given).
fn quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Replaces `path` atomically: a node starting meanwhile reads the old file
/// or the new one, never half of one.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(contents)?;
    // Readable by the nodes, which may run as another user.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_inet_reads() {
        let s = render(
            "hosta",
            &[("hostb".into(), Ipv4Addr::new(127, 77, 0, 2))],
            Path::new("/run/erlmesh/hosts"),
        );
        assert!(s.contains("{hosts_file, \"/run/erlmesh/hosts\"}.\n"));
        let h = render_hosts("hosta", &[("hostb".into(), Ipv4Addr::new(127, 77, 0, 2))]);
        assert!(h.contains("127.0.0.1 hosta\n127.77.0.2 hostb\n"));
        assert!(s.contains("{host, {127,0,0,1}, [\"hosta\"]}.\n"));
        assert!(s.contains("{host, {127,77,0,2}, [\"hostb\"]}.\n"));
        assert!(s.ends_with("{lookup, [file, native]}.\n"));
    }

    #[test]
    fn replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/inetrc");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
