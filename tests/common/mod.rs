//! Test harness: real erlmesh processes and real `erl` nodes on loopback,
//! each simulated host with its own EPMD port and TLS port (free ports
//! below the kernel's ephemeral range, see `free_port`), all killed when
//! the test ends, pass or fail.
#![allow(dead_code)]

pub mod netns;
pub mod traffic;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const ERLMESH: &str = env!("CARGO_BIN_EXE_erlmesh");
/// How long one evaluation on a node may take before the test fails.
pub const EVAL_TIMEOUT: Duration = Duration::from_secs(40);

/// Fails (never skips) when Erlang is missing: the test command installs it.
pub fn require_erl() {
    let ok = Command::new("erl")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "`erl` not found: run scripts/test.sh, which installs Debian's erlang-base"
    );
}

/// A free port below the kernel's ephemeral range (32768 and up here), so
/// that no outgoing connection of a parallel test can take it between a
/// kill and a restart of the erlmesh that listens on it. Each test process
/// uses its own slice of 20000..32000; every port is checked with a bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slice = (std::process::id() % 12) * 1000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + slice + (n % 1000);
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() && TcpListener::bind(("0.0.0.0", port as u16)).is_ok()
        {
            return port as u16;
        }
        assert!(n < 100_000, "no free port in 20000..32000");
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Sends a signal by number (15 TERM, 9 KILL, 1 HUP).
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }
    /// Waits for exit; None on timeout.
    pub fn wait_timeout(&mut self, t: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + t;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process the test did not start itself (an erlmesh that took over
/// from one it did), killed on drop.
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.0.to_string())
            .stderr(Stdio::null())
            .status();
    }
}

/// A directory of certificates and configs for one test's cluster.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Bind mounts of `dir` into OTP roots (see [`Cluster::share_with`]),
    /// undone when the cluster is dropped.
    mounts: std::cell::RefCell<Vec<PathBuf>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // ERLMESH_TEST_KEEP=DIR keeps a copy of every cluster's directory
        // (configs, logs) under DIR, for a failure's post-mortem.
        if let Some(keep) = std::env::var_os("ERLMESH_TEST_KEEP") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = Command::new("cp").arg("-a").arg(self.path()).arg(&keep).status();
        }
        for m in self.mounts.borrow().iter() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

impl Cluster {
    /// A new cluster CA in a fresh directory.
    pub fn new() -> Cluster {
        require_erl();
        let dir = tempfile::tempdir().unwrap();
        run_ok(&["cert", "ca", "--dir", dir.path().join("certs").to_str().unwrap()]);
        Cluster {
            dir,
            mounts: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes this cluster's directory visible inside the OTP root `root`
    /// at the same path (a bind mount, undone on drop), so that nodes run
    /// there find the resolver files erlmesh writes. Needs root.
    pub fn share_with(&self, root: &Path) {
        let inside = root.join(self.path().strip_prefix("/").unwrap());
        if self.mounts.borrow().contains(&inside) {
            return;
        }
        std::fs::create_dir_all(&inside).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(self.path())
            .arg(&inside)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount --bind {} {}", self.path().display(), inside.display());
        self.mounts.borrow_mut().push(inside);
    }

    /// Declares a host (certificate issued now); peers are added with
    /// [`Host::peer`] before [`Host::start`].
    pub fn host(&self, name: &str) -> Host {
        run_ok(&[
            "cert",
            "issue",
            "--dir",
            self.path().join("certs").to_str().unwrap(),
            "--host",
            name,
        ]);
        Host {
            name: name.to_owned(),
            dir: self.path().to_owned(),
            listen_ip: "127.0.0.1".into(),
            listen_port: free_port(),
            epmd_port: free_port(),
            netns: None,
            peers: Vec::new(),
            extra: String::new(),
            tls_extra: String::new(),
            ca: "certs/ca.pem".into(),
            cert: format!("certs/{name}.pem"),
            key: format!("certs/{name}.key"),
            seeds: Vec::new(),
            policies: Vec::new(),
            dist_policies: Vec::new(),
            otp_root: None,
            run_env: Vec::new(),
            run_args: Vec::new(),
            skip_env: Vec::new(),
            bare: false,
            exe: None,
            config_file: None,
            successors: Vec::new(),
            proc: None,
            starts: 0,
        }
    }
}

/// Makes every host in `hs` a peer of every other.
pub fn mesh(hs: &mut [Host]) {
    for i in 0..hs.len() {
        for j in 0..hs.len() {
            if i != j {
                let other = (hs[j].name.clone(), format!("{}:{}", hs[j].listen_ip, hs[j].listen_port));
                hs[i].peers.push(other);
            }
        }
    }
}

impl Cluster {
    /// Hosts `a` and `b`, each listing the other as a peer, with `extra_a`
    /// and `extra_b` as extra top-level config lines; both started.
    pub fn pair_named(&self, a: &str, b: &str, extra_a: &str, extra_b: &str) -> (Host, Host) {
        let mut ha = self.host(a);
        let mut hb = self.host(b);
        ha.peer(&hb);
        hb.peer(&ha);
        ha.extra = extra_a.into();
        hb.extra = extra_b.into();
        ha.start();
        hb.start();
        (ha, hb)
    }

    /// [`Cluster::pair_named`] for hosta and hostb.
    pub fn pair(&self, extra_a: &str, extra_b: &str) -> (Host, Host) {
        self.pair_named("hosta", "hostb", extra_a, extra_b)
    }
}

/// Runs erlmesh with `args`: (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ERLMESH).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs erlmesh with `args`, asserting success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let (ok, out, err) = run(args);
    assert!(ok, "erlmesh {args:?} failed: {err}");
    out
}

/// One simulated host: an erlmesh config and, once started, its process.
pub struct Host {
    pub name: String,
    pub dir: PathBuf,
    pub listen_ip: String,
    pub listen_port: u16,
    pub epmd_port: u16,
    /// The network namespace the host's processes run in, if any.
    pub netns: Option<String>,
    /// (host, TLS address) of each peer.
    pub peers: Vec<(String, String)>,
    /// Extra top-level config lines.
    pub extra: String,
    /// Extra lines in the config's [tls] table (paths relative to the
    /// cluster directory).
    pub tls_extra: String,
    /// The CA, certificate and key files, relative to the cluster
    /// directory (default: `certs/ca.pem`, `certs/NAME.pem`, `certs/NAME.key`).
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// TLS addresses to join through.
    pub seeds: Vec<String>,
    /// Per peer host: (nodes, local_nodes) patterns for its `[[peers]]` entry.
    pub policies: Vec<(String, Vec<String>, Vec<String>)>,
    /// Per peer host: the `dist_policy` of its `[[peers]]` entry (the
    /// `[dist_policies.NAME]` tables go in `extra`).
    pub dist_policies: Vec<(String, String)>,
    /// A Debian root with another OTP release (scripts/otp-root.sh): this
    /// host's nodes run there, through chroot.
    pub otp_root: Option<PathBuf>,
    /// Extra environment and arguments for `erlmesh run`.
    pub run_env: Vec<(String, String)>,
    pub run_args: Vec<String>,
    /// Variables of `erlmesh env` that nodes started here do not get.
    pub skip_env: Vec<String>,
    /// The erlmesh binary this host runs (default: the one cargo built).
    pub exe: Option<PathBuf>,
    /// Where its config is written (default: DIR/NAME.toml); with one set,
    /// every path in it is absolute.
    pub config_file: Option<PathBuf>,
    /// Processes that took over from this host's erlmesh (`erlmesh
    /// upgrade`), killed with the host.
    pub successors: Vec<PidGuard>,
    /// Nodes started here get no erlmesh environment and no ERL_*
    /// variable at all (`env -i`): transparent mode.
    pub bare: bool,
    pub proc: Option<Proc>,
    starts: u32,
}

impl Host {
    /// Adds `other` as a peer of this host.
    pub fn peer(&mut self, other: &Host) {
        self.peers
            .push((other.name.clone(), format!("{}:{}", other.listen_ip, other.listen_port)));
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_file
            .clone()
            .unwrap_or_else(|| self.dir.join(format!("{}.toml", self.name)))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.erlmesh.log", self.name))
    }

    /// Writes this host's config with erlmesh's own writer
    /// (`config::Sketch`, also behind `erlmesh config init`, which the
    /// scripts use), unchecked: tests write broken configs on purpose.
    pub fn write_config(&self) {
        let peers = self
            .peers
            .iter()
            .map(|(h, addr)| {
                let policy = self.policies.iter().find(|(p, _, _)| p == h);
                erlmesh::config::SketchPeer {
                    host: h.clone(),
                    address: addr.clone(),
                    nodes: policy.map(|(_, n, _)| n.clone()),
                    local_nodes: policy.map(|(_, _, l)| l.clone()),
                    dist_policy: self.dist_policies.iter().find(|(p, _)| p == h).map(|(_, d)| d.clone()),
                }
            })
            .collect();
        let sketch = erlmesh::config::Sketch {
            host: self.name.clone(),
            listen: format!("{}:{}", self.listen_ip, self.listen_port),
            epmd_port: self.epmd_port,
            state_dir: self.dir.join(format!("state-{}", self.name)).display().to_string(),
            ca: self.dir.join(&self.ca).display().to_string(),
            cert: self.dir.join(&self.cert).display().to_string(),
            key: self.dir.join(&self.key).display().to_string(),
            seeds: self.seeds.clone(),
            peers,
            extra: self.extra.clone(),
            tls_extra: self.tls_extra.clone(),
        };
        std::fs::write(self.config_path(), sketch.render()).unwrap();
    }

    /// The running erlmesh's `/status`, from its control socket.
    pub fn status(&self) -> Option<String> {
        let sock = self.dir.join(format!("state-{}", self.name)).join("erlmesh.sock");
        erlmesh::ops::control::request(&sock, "/status").ok()
    }

    /// Starts erlmesh and waits for its "erlmesh ready" line.
    pub fn start(&mut self) {
        self.write_config();
        self.start_with_written_config();
    }

    /// Starts erlmesh on the config file as it is on disk.
    pub fn start_with_written_config(&mut self) {
        let log = self.log_path();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let exe = self.exe.clone().unwrap_or_else(|| PathBuf::from(ERLMESH));
        let child = self
            .command(exe.to_str().unwrap())
            .args(["run", "--config", self.config_path().to_str().unwrap()])
            .args(&self.run_args)
            .env("RUST_LOG", "erlmesh=debug")
            .envs(self.run_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap();
        let mut p = Proc {
            child,
            what: format!("erlmesh {}", self.name),
        };
        self.starts += 1;
        // Ready when the control socket says so (every listener bound, the
        // join through seeds done).
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("erlmesh {} exited ({s}) before ready:\n{}", self.name, self.log());
            }
            if self.status().is_some_and(|s| s.contains("state: ready")) {
                break;
            }
            assert!(
                Instant::now() < end,
                "erlmesh {} not ready in 40 s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(p);
    }

    /// A command run on this host (inside its network namespace, if any).
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    /// Stops erlmesh with SIGKILL.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether this host's log shows `text` within `within`.
    pub fn log_shows(&self, text: &str, within: Duration) -> bool {
        wait_for(within, || self.log().contains(text))
    }

    /// The environment `erlmesh env` gives this host's nodes.
    pub fn env(&self) -> Vec<(String, String)> {
        let out = run_ok(&["env", "--config", self.config_path().to_str().unwrap()]);
        out.lines()
            .map(|l| {
                let l = l.strip_prefix("export ").expect("export line");
                let (k, v) = l.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('\'').to_owned())
            })
            .collect()
    }

    /// Starts a node `-sname NAME@host` (or `-name` when `long`).
    pub fn node(&self, name: &str) -> Node {
        self.node_with(name, &[])
    }

    /// Starts node `NAME@host` with extra `erl` arguments.
    pub fn node_with(&self, name: &str, args: &[&str]) -> Node {
        Node::start(self, &format!("{name}@{}", self.name), args)
    }

    /// Starts a node under a full name of the test's choosing.
    pub fn node_named(&self, full: &str) -> Node {
        Node::start(self, full, &[])
    }
}

/// The loop a test node runs: one Erlang expression per stdin line, its
/// value printed as one line starting with "=> ".
const EVAL_LOOP: &str = r#"
Loop = fun Loop() ->
  case io:get_line('') of
    eof -> halt();
    Line ->
      R = try
            {ok, Ts, _} = erl_scan:string(Line),
            {ok, Es} = erl_parse:parse_exprs(Ts),
            {value, V, _} = erl_eval:exprs(Es, []),
            V
          catch C:E -> {C, E} end,
      S = re:replace(io_lib:format("~p", [R]), "\\s*\\n\\s*", " ", [global, {return, list}]),
      io:format("=> ~s~n", [S]),
      Loop()
  end
end,
Loop()."#;

/// A real Erlang node driven through its stdin.
pub struct Node {
    pub name: String,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub log: PathBuf,
    proc: Proc,
}

impl Node {
    fn start(host: &Host, full: &str, extra: &[&str]) -> Node {
        let mut n = Node::spawn(host, full, extra);
        let me = n.eval("node().");
        assert_eq!(me.trim_matches('\''), n.name, "node did not come up as itself");
        n
    }

    /// A node with a dynamic name (`-sname undefined@HOST`, HOST being the
    /// simulated host's name rather than the machine's): it is named by the
    /// first node it connects to.
    pub fn dynamic(host: &Host) -> Node {
        let mut n = Node::spawn(host, &format!("undefined@{}", host.name), &[]);
        assert_eq!(n.eval("ok."), "ok");
        n
    }

    fn spawn(host: &Host, full: &str, extra: &[&str]) -> Node {
        let full = full.to_owned();
        let flag = if full.contains('.') { "-name" } else { "-sname" };
        let log = host.dir.join(format!("{full}.log"));
        let mut cmd = match &host.otp_root {
            None if host.bare => {
                let mut c = host.command("env");
                c.args([
                    "-i",
                    "PATH=/usr/local/bin:/usr/bin:/bin",
                    &format!("HOME={}", host.dir.display()),
                    "erl",
                ]);
                c
            }
            None => host.command("erl"),
            Some(root) => {
                // The root's own erl, with nothing of this machine's
                // environment but what erlmesh gives nodes (added below).
                let mut c = Command::new("chroot");
                c.arg(root)
                    .args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp"]);
                for (k, v) in host.env() {
                    if !host.skip_env.contains(&k) {
                        c.arg(format!("{k}={v}"));
                    }
                }
                c.arg("erl");
                c
            }
        };
        // Crash dumps and mnesia directories land in the test's directory.
        cmd.current_dir(&host.dir);
        cmd.args(extra);
        cmd.args([
            "-noshell",
            flag,
            &full,
            "-setcookie",
            "erlmesh-test",
            "-kernel",
            "net_setuptime",
            "10",
        ]);
        cmd.args(["-eval", EVAL_LOOP]);
        for (k, v) in if host.bare { Vec::new() } else { host.env() } {
            if !host.skip_env.contains(&k) {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proc = Proc {
            child,
            what: full.clone(),
        };
        let stdin = proc.child.stdin.take().unwrap();
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, rx) = channel();
        let logc = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(v) = line.strip_prefix("=> ") {
                    if tx.send(v.to_owned()).is_err() {
                        break;
                    }
                } else if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&logc) {
                    let _ = writeln!(f, "stdout: {line}");
                }
            }
        });
        Node {
            name: full,
            stdin,
            lines: rx,
            log,
            proc,
        }
    }

    /// Evaluates one Erlang expression (ending in '.') and returns the
    /// printed value.
    pub fn eval(&mut self, expr: &str) -> String {
        assert!(!expr.contains('\n'));
        writeln!(self.stdin, "{expr}").unwrap_or_else(|e| panic!("{} is gone ({e}):\n{}", self.name, self.logs()));
        self.stdin.flush().unwrap();
        match self.lines.recv_timeout(EVAL_TIMEOUT) {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no answer to {expr} in {EVAL_TIMEOUT:?}:\n{}",
                self.name,
                self.logs()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!("{} exited during {expr}:\n{}", self.name, self.logs()),
        }
    }

    /// Evaluates until the value equals `want` or `within` passes; returns
    /// the last value.
    pub fn eval_until(&mut self, expr: &str, want: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let v = self.eval(expr);
            if v == want || Instant::now() > end {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn os_pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Cluster {
    /// Compiles tests/erl/NAME.erl into this cluster's directory and
    /// returns the `-pa` arguments that put it on a node's code path.
    pub fn erl_module(&self, name: &str) -> Vec<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/erl")
            .join(format!("{name}.erl"));
        let out = Command::new("erlc")
            .arg("-o")
            .arg(self.path())
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "erlc {src:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        vec!["-pa".into(), self.path().to_str().unwrap().to_owned()]
    }
}

/// Waits until `f` is true or `within` passes; returns whether it became true.
pub fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A send_name ('N', version 6) for `node`, as a real node sends it.
pub fn send_name(node: &str) -> Vec<u8> {
    let mut body = vec![b'N'];
    body.extend_from_slice(&0x0000_000d_07df_7fbd_u64.to_be_bytes());
    body.extend_from_slice(&1u32.to_be_bytes());
    body.extend_from_slice(&(node.len() as u16).to_be_bytes());
    body.extend_from_slice(node.as_bytes());
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// Copies `from` over `to` in one rename, as a tool that rotates files does.
pub fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp-install");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Whether the tests run as root (namespaces, chroots, mounts, dpkg).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
