//! The Debian package (deploy/deb/build.sh): built from this repository,
//! installed on this machine with dpkg, checked (files, the erlmesh system
//! user, `erlmesh --version`, `systemd-analyze verify` on the unit),
//! upgraded to a newer build while the installed erlmesh carries a tunnel
//! (its postinst runs `erlmesh upgrade`: no nodedown), then purged. As
//! root only (dpkg installs system-wide); otherwise it says it was skipped.

mod common;
use common::traffic::*;
use common::*;
use std::process::Command;

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Purges the package (and the test's config) when the test ends, pass or fail.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = std::fs::remove_file("/etc/erlmesh/erlmesh.toml");
        let _ = sh("dpkg --purge erlmesh");
    }
}

#[test]
fn the_debian_package_installs_a_user_a_unit_and_a_working_binary() {
    if !sh("[ \"$(id -u)\" = 0 ]").0 {
        println!("SKIPPED: installing a package needs root");
        return;
    }
    if sh("dpkg -s erlmesh").0 {
        panic!("an erlmesh package is already installed on this machine; not touching it");
    }
    let out = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/deb/build.sh");
    let built = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .env("ERLMESH_BIN", common::ERLMESH)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let (ok, listing) = sh(&format!("dpkg-deb -c {deb}"));
    assert!(ok, "{listing}");
    for f in [
        "./usr/bin/erlmesh",
        "./lib/systemd/system/erlmesh.service",
        "./etc/erlmesh/erlmesh.toml.example",
        "./usr/share/doc/erlmesh/README.md",
    ] {
        assert!(listing.contains(f), "{f} missing:\n{listing}");
    }

    let _purge = Purge;
    let (ok, log) = sh(&format!("dpkg -i {deb}"));
    assert!(ok, "{log}");
    let (ok, user) = sh("getent passwd erlmesh");
    assert!(ok, "no erlmesh user: {user}");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(uid < 1000, "not a system user: {user}");
    assert!(user.trim_end().ends_with("/usr/sbin/nologin"), "{user}");
    let (ok, version) = sh("/usr/bin/erlmesh --version");
    assert!(ok && version.starts_with("erlmesh "), "{version}");
    let (ok, perms) = sh("stat -c '%U:%G %a' /etc/erlmesh");
    assert!(ok && perms.trim() == "root:erlmesh 750", "{perms}");
    let unit = std::fs::read_to_string("/lib/systemd/system/erlmesh.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/erlmesh run")
            && unit.contains("RuntimeDirectory=erlmesh")
            && unit.contains("User=erlmesh")
            && unit.contains("LimitNOFILE="),
        "{unit}"
    );
    let (ok, verify) = sh("systemd-analyze verify /lib/systemd/system/erlmesh.service");
    assert!(ok, "systemd-analyze verify: {verify}");
    // The example config is valid for the installed binary.
    let (ok, env) = sh("/usr/bin/erlmesh env --config /etc/erlmesh/erlmesh.toml.example");
    assert!(ok && env.contains("ERL_EPMD_PORT"), "{env}");

    // A newer build installed while erlmesh (the installed binary, with
    // /etc/erlmesh/erlmesh.toml) carries a tunnel: the postinst hands
    // everything to the new binary, and the nodes see no nodedown.
    let newer = Command::new("bash")
        .arg(&script)
        .arg(out.path().join("newer"))
        .env("ERLMESH_BIN", common::ERLMESH)
        .env("ERLMESH_VERSION", "99.0.0")
        .output()
        .unwrap();
    assert!(newer.status.success(), "{}", String::from_utf8_lossy(&newer.stderr));
    let newer_deb = String::from_utf8_lossy(&newer.stdout).trim().to_owned();
    let c = Cluster::new();
    let mut ha = c.host("hosta");
    let mut hb = c.host("hostb");
    ha.exe = Some("/usr/bin/erlmesh".into());
    ha.config_file = Some("/etc/erlmesh/erlmesh.toml".into());
    ha.peer(&hb);
    hb.peer(&ha);
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("net_adm:ping(b@hostb)."), "pong", "{}", ha.log());
    watch_nodedowns(&mut a);
    watch_nodedowns(&mut b);
    start_traffic(&mut a, &mut b, "b@hostb");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = tunnels(&ha);
    let (ok, log) = sh(&format!("dpkg -i {newer_deb}"));
    assert!(ok, "{log}\n{}", ha.log());
    assert!(log.contains("tunnel(s)"), "the postinst did not upgrade: {log}");
    let (pid, pause) = parse_upgrade(&log);
    ha.successors.push(PidGuard(pid));
    let (ok, version) = sh("dpkg-query -W -f='${Version}' erlmesh");
    assert!(ok && version == "99.0.0", "{version}");
    assert_eq!(tunnels(&ha), before, "the tunnels changed across the package upgrade");
    let (sent, got, bad, _, failed) = stop_traffic(&mut a, "b@hostb");
    assert_eq!(
        (got, bad, failed),
        (sent, 0, 0),
        "the stream across the package upgrade"
    );
    assert_eq!(nodedowns(&mut a, "b@hostb"), "[]");
    assert_eq!(nodedowns(&mut b, "a@hosta"), "[]");
    eprintln!("package upgrade: tunnels paused {pause} ms, {sent} messages checked");
    drop((a, b));
    drop((ha, hb));

    // Purged: no binary, no user.
    let (ok, log) = sh("dpkg --purge erlmesh");
    assert!(ok, "{log}");
    assert!(!std::path::Path::new("/usr/bin/erlmesh").exists());
    assert!(!sh("getent passwd erlmesh").0, "the user outlived the purge");
}
