//! The command line as an operator meets it: certificates, env lines, and
//! errors that name the file and the key.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::run as erlmesh;

#[test]
fn cert_files_modes_and_no_silent_overwrite() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("certs");
    let dir = dir.to_str().unwrap();
    assert!(erlmesh(&["cert", "ca", "--dir", dir]).0);
    assert!(erlmesh(&["cert", "issue", "--dir", dir, "--host", "hosta", "--days", "30"]).0);
    for (f, mode) in [
        ("ca.key", 0o600),
        ("hosta.key", 0o600),
        ("ca.pem", 0o644),
        ("hosta.pem", 0o644),
    ] {
        let m = std::fs::metadata(d.path().join("certs").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    let before = std::fs::read(d.path().join("certs/hosta.pem")).unwrap();
    let (ok, _, err) = erlmesh(&["cert", "issue", "--dir", dir, "--host", "hosta"]);
    assert!(!ok);
    assert!(err.contains("hosta.pem") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(d.path().join("certs/hosta.pem")).unwrap(), before);
    assert!(erlmesh(&["cert", "issue", "--dir", dir, "--host", "hosta", "--force"]).0);
    assert_ne!(std::fs::read(d.path().join("certs/hosta.pem")).unwrap(), before);
    // The certificate names the host, as OpenSSL reads it.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage", "-in"])
        .arg(d.path().join("certs/hosta.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DNS:hosta") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    let out = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(d.path().join("certs/ca.pem"))
        .arg(d.path().join("certs/hosta.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// hosta's config (one peer), through the shared writer, with `extra`
/// top-level lines and `tls_cert` as its certificate.
fn config_with(extra: &str, tls_cert: &str) -> (Cluster, Host) {
    let c = Cluster::new();
    let mut h = c.host("hosta");
    h.peers.push(("hostb".into(), "127.0.0.1:1".into()));
    h.extra = extra.into();
    h.cert = tls_cert.into();
    h.write_config();
    (c, h)
}

#[test]
fn config_errors_name_file_and_key() {
    let (_c, h) = config_with("listen_port = 5", "certs/hosta.pem");
    let (ok, _, err) = erlmesh(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("hosta.toml") && err.contains("listen_port"), "{err}");
    assert_eq!(err.matches("panicked").count(), 0);

    let (_c, h) = config_with("", "certs/missing.pem");
    let (ok, _, err) = erlmesh(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("missing.pem") && err.contains("No such file"), "{err}");

    let (_c, h) = config_with("", "certs/ca.pem");
    let (ok, _, err) = erlmesh(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("ca.pem") && err.contains("not this host"), "{err}");

    let (ok, _, err) = erlmesh(&["run", "--config", "/nonexistent/erlmesh.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/erlmesh.toml"), "{err}");
}

#[test]
fn a_taken_epmd_port_is_a_clear_error() {
    let (_c, mut h) = config_with("", "certs/hosta.pem");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    h.epmd_port = port;
    h.write_config();
    let (ok, _, err) = erlmesh(&["run", "--config", h.config_path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("system epmd"),
        "{err}"
    );
}

#[test]
fn env_lines_for_embedded_and_system_epmd() {
    let (c, h) = config_with("", "certs/hosta.pem");
    let (ok, out, _) = erlmesh(&["env", "--config", h.config_path().to_str().unwrap()]);
    assert!(ok);
    let inetrc = c.path().canonicalize().unwrap().join("state-hosta/inetrc");
    assert!(
        out.contains(&format!("export ERL_INETRC='{}'\n", inetrc.display())),
        "{out}"
    );
    assert!(out.contains("export ERL_EPMD_PORT='"), "{out}");
    assert!(
        out.contains("export ERL_ZFLAGS='-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false'\n"),
        "{out}"
    );
    // sh can eval it
    let sh = Command::new("sh")
        .arg("-c")
        .arg(format!("{out}\necho \"$ERL_ZFLAGS\""))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout).trim(),
        "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
    );

    let (_c, h) = config_with("epmd = \"system\"", "certs/hosta.pem");
    let (ok, out, _) = erlmesh(&["env", "--config", h.config_path().to_str().unwrap()]);
    assert!(ok);
    assert!(
        out.contains("export ERL_EPMD_ADDRESS='127.0.0.1'") && !out.contains("start_epmd"),
        "{out}"
    );
}

#[test]
fn config_init_writes_a_config_that_runs_and_refuses_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let certs = d.path().join("certs");
    let certs = certs.to_str().unwrap();
    assert!(erlmesh(&["cert", "ca", "--dir", certs]).0);
    assert!(erlmesh(&["cert", "issue", "--dir", certs, "--host", "hosta"]).0);
    let conf = d.path().join("hosta.toml");
    let conf = conf.to_str().unwrap();
    let init = |extra: &[&str]| {
        let mut args = vec![
            "config",
            "init",
            "--host",
            "hosta",
            "--output",
            conf,
            "--certs",
            certs,
            "--listen",
            "127.0.0.1:24370",
            "--epmd-port",
            "24369",
            "--state-dir",
            "state",
            "--peer",
            "hostb=127.0.0.1:24371",
        ];
        args.extend_from_slice(extra);
        erlmesh(&args)
    };
    let policy = "[dist_policies.edge]\nregistered = [\"cache\"]";
    let (ok, _, err) = init(&["--extra", policy, "--dist-policy", "edge"]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(conf).unwrap();
    assert!(
        text.contains("dist_policy = \"edge\"") && text.contains("address = \"127.0.0.1:24371\""),
        "{text}"
    );
    // It is what `erlmesh run` reads: env lines come out of it.
    let (ok, out, err) = erlmesh(&["env", "--config", conf]);
    assert!(ok && out.contains("ERL_EPMD_PORT='24369'"), "{out}{err}");
    // Not overwritten silently; bad input named.
    let (ok, _, err) = init(&[]);
    assert!(!ok && err.contains("exists") && err.contains("--force"), "{err}");
    let (ok, _, err) = init(&["--force", "--peer", "hostc"]);
    assert!(
        !ok && err.contains("--peer \"hostc\"") && err.contains("HOST=ADDRESS"),
        "{err}"
    );
    let (ok, _, err) = init(&["--force", "--dist-policy", "nope"]);
    assert!(
        !ok && err.contains("peers[0].dist_policy") && err.contains("no [dist_policies.nope]"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(conf).unwrap(),
        text,
        "a refused init left the file as it was"
    );
}
