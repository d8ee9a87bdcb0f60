//! The core story across OTP releases: nodes of Debian 12's OTP 25 and of
//! OTP 27 (Debian 13 "trixie") and 29 ("sid"), the latter two run in
//! chroots built once per machine by scripts/otp-root.sh, through erlmesh:
//! ping and rpc both ways, a value written on one host and read on the
//! other, a hidden node, a restarted node reached again, and long names.
//! Needs root (chroot, bind mounts); says it was skipped otherwise.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The root for `suite`, built when missing.
fn otp_root(suite: &str) -> PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/otp-root.sh");
    let out = Command::new("bash").arg(script).arg(suite).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/otp-root.sh {suite}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// (suite, OTP release) for a side; None is this machine's OTP 25.
fn side(suite: Option<&str>) -> (Option<PathBuf>, &'static str) {
    match suite {
        None => (None, "\"25\""),
        Some("trixie") => (Some(otp_root("trixie")), "\"27\""),
        Some("sid") => (Some(otp_root("sid")), "\"29\""),
        Some(s) => panic!("unknown suite {s}"),
    }
}

/// The story between a node of `left`'s OTP on host A and one of
/// `right`'s on host B, with host names `a_host` and `b_host` (dotted for
/// long names).
fn story(left: Option<&str>, right: Option<&str>, a_host: &str, b_host: &str) {
    if !is_root() {
        println!("SKIPPED: chroot and bind mounts need root");
        return;
    }
    let (a_root, a_rel) = side(left);
    let (b_root, b_rel) = side(right);
    let c = Cluster::new();
    let mut ha = c.host(a_host);
    let mut hb = c.host(b_host);
    ha.peer(&hb);
    hb.peer(&ha);
    for (h, root) in [(&mut ha, &a_root), (&mut hb, &b_root)] {
        if let Some(r) = root {
            c.share_with(r);
            h.otp_root = Some(r.clone());
        }
    }
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let mut b = hb.node("b");
    assert_eq!(a.eval("erlang:system_info(otp_release)."), a_rel);
    assert_eq!(b.eval("erlang:system_info(otp_release)."), b_rel);
    let (an, bn) = (format!("'a@{a_host}'"), format!("'b@{b_host}'"));
    assert_eq!(a.eval(&format!("net_adm:ping({bn}).")), "pong", "{}", ha.log());
    assert_eq!(b.eval(&format!("net_adm:ping({an}).")), "pong");
    assert_eq!(
        a.eval(&format!("rpc:call({bn}, erlang, system_info, [otp_release]).")),
        b_rel
    );
    assert_eq!(
        b.eval(&format!("rpc:call({an}, erlang, system_info, [otp_release]).")),
        a_rel
    );
    // A value written on host A, read from host B.
    assert_eq!(
        a.eval("ets:new(cache, [named_table, public]), ets:insert(cache, {k, <<\"v-4711\">>})."),
        "true"
    );
    assert_eq!(
        b.eval(&format!("rpc:call({an}, ets, lookup, [cache, k]).")),
        "[{k,<<\"v-4711\">>}]"
    );
    // A hidden node on host B.
    let mut h = hb.node_with("h", &["-hidden"]);
    assert_eq!(h.eval(&format!("net_adm:ping({an}).")), "pong");
    assert_eq!(
        a.eval_until(
            &format!("lists:member('h@{b_host}', nodes(hidden))."),
            "true",
            Duration::from_secs(5)
        ),
        "true"
    );
    // B restarts; A reaches the new one.
    drop(b);
    let mut b = hb.node("b");
    assert_eq!(
        a.eval_until(&format!("net_adm:ping({bn})."), "pong", Duration::from_secs(15)),
        "pong"
    );
    assert_eq!(b.eval("atom_to_list(node())."), format!("\"b@{b_host}\""));
}

/// Short names, then long names, between `left` and `right`.
fn both_name_kinds(left: Option<&str>, right: Option<&str>) {
    story(left, right, "hosta", "hostb");
    story(left, right, "hosta.example.com", "hostb.example.com");
}

#[test]
fn otp25_and_otp27() {
    both_name_kinds(None, Some("trixie"));
}

#[test]
fn otp27_and_otp27() {
    both_name_kinds(Some("trixie"), Some("trixie"));
}

#[test]
fn otp25_and_otp29() {
    both_name_kinds(None, Some("sid"));
}

#[test]
fn otp29_and_otp29() {
    both_name_kinds(Some("sid"), Some("sid"));
}

/// A node with a dynamic name (`-sname undefined@hostb`; `erl -remsh`
/// without a name starts one under the machine's own name, which is the
/// erlmesh host name on a real host) on host B, of `suite`'s OTP,
/// connecting to a@hosta: host A's node assigns the name, and both
/// erlmesh check it (hostb's, and allowed by the policies) before the node
/// learns it.
fn dynamic_story(suite: Option<&str>) {
    if !is_root() {
        println!("SKIPPED: chroot and bind mounts need root");
        return;
    }
    let (root, rel) = side(suite);
    let c = Cluster::new();
    let (mut ha, mut hb) = (c.host("hosta"), c.host("hostb"));
    ha.peer(&hb);
    hb.peer(&ha);
    if let Some(r) = &root {
        c.share_with(r);
        hb.otp_root = Some(r.clone());
    }
    ha.start();
    hb.start();
    let mut a = ha.node("a");
    let mut d = Node::dynamic(&hb);
    assert_eq!(d.eval("erlang:system_info(otp_release)."), rel);
    assert_eq!(d.eval("net_kernel:connect_node(a@hosta)."), "true", "{}", hb.log());
    let name = d.eval("atom_to_list(node()).");
    assert!(name.ends_with("@hostb\""), "assigned {name}");
    assert_eq!(d.eval("rpc:call(a@hosta, erlang, node, [])."), "a@hosta");
    assert_eq!(
        a.eval(&format!("lists:member(list_to_atom({name}), nodes(connected)).")),
        "true"
    );
    assert!(ha.log_shows("tunnel open", Duration::from_secs(10)), "{}", ha.log());
}

#[test]
fn dynamic_names_on_otp25() {
    dynamic_story(None);
}

#[test]
fn dynamic_names_on_otp27() {
    dynamic_story(Some("trixie"));
}

#[test]
fn dynamic_names_on_otp29() {
    dynamic_story(Some("sid"));
}

#[test]
fn a_dynamic_name_is_held_to_the_peers_policy() {
    if !is_root() {
        println!("SKIPPED: needs root like the rest of this file");
        return;
    }
    let c = Cluster::new();
    let (mut ha, mut hb) = (c.host("hosta"), c.host("hostb"));
    ha.peer(&hb);
    hb.peer(&ha);
    // hostb's nodes named b only: a generated name is not among them.
    ha.policies.push(("hostb".into(), vec!["b".into()], vec!["*".into()]));
    ha.start();
    hb.start();
    let _a = ha.node("a");
    let mut d = Node::dynamic(&hb);
    assert_eq!(d.eval("net_kernel:connect_node(a@hosta)."), "false");
    assert!(
        ha.log_shows(
            "refused: the dynamic name assigned is not allowed",
            Duration::from_secs(10)
        ),
        "{}",
        ha.log()
    );
    let mut b = hb.node("b");
    assert_eq!(b.eval("net_adm:ping(a@hosta)."), "pong");
}

/// `erl -remsh b@hostb` with no name of its own, on a host whose erlmesh
/// host name is the machine's own name (as on a real host): OTP asks for a
/// dynamic name under that name, and the remote shell opens through
/// erlmesh.
fn remsh_without_a_name(suite: Option<&str>) {
    if !is_root() {
        println!("SKIPPED: chroot and bind mounts need root");
        return;
    }
    let (root, _) = side(suite);
    let out = Command::new("hostname").arg("-s").output().unwrap();
    let machine = String::from_utf8_lossy(&out.stdout).trim().to_lowercase();
    let c = Cluster::new();
    let (mut ha, mut hb) = (c.host(&machine), c.host("hostb"));
    ha.peer(&hb);
    hb.peer(&ha);
    if let Some(r) = &root {
        c.share_with(r);
    }
    ha.start();
    hb.start();
    let _b = hb.node("b");
    let env: String = ha.env().iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let erl = "erl -remsh b@hostb -setcookie erlmesh-test";
    let inner = match &root {
        Some(r) => format!(
            "chroot {} /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp {env}{erl}",
            r.display()
        ),
        None => format!("env {env}{erl}"),
    };
    let out = Command::new("timeout")
        .args(["15", "script", "-qec", &inner, "/dev/null"])
        .current_dir(c.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(b@hostb)1>"), "no remote shell: {text}\n{}", ha.log());
    assert!(ha.log().contains(&format!("(dynamic)@{machine}")), "{}", ha.log());
}

#[test]
fn remsh_without_a_name_on_otp25() {
    remsh_without_a_name(None);
}

#[test]
fn remsh_without_a_name_on_otp27() {
    remsh_without_a_name(Some("trixie"));
}

#[test]
fn remsh_without_a_name_on_otp29() {
    remsh_without_a_name(Some("sid"));
}
