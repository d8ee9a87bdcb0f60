//! The old process: starts the installed binary, freezes, hands everything
//! over, and exits once the new process is ready; or thaws and goes on.

use super::{fds, handoff, Phase, Report, State, STATE_VERSION};
use super::{ListenerState, RegistrationState, TunnelState};
use super::{CONNECT_WAIT, FREEZE_WAIT, READY_WAIT, REFUSAL_WAIT, SOCKET_FILE};
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tracing::{info, warn};

/// What an upgrade needs to know of the running process.
pub struct Context {
    /// The binary's path as it was started (what the package replaces).
    pub exe: PathBuf,
    /// Its arguments after the program name (`run --config ...`).
    pub args: Vec<OsString>,
    pub state_dir: PathBuf,
    pub mesh: Arc<crate::mesh::Mesh>,
    pub metrics: Arc<crate::ops::metrics::Metrics>,
}

static CONTEXT: OnceLock<Context> = OnceLock::new();
static BUSY: AtomicBool = AtomicBool::new(false);

/// Sets what [`upgrade`] needs, once, when `erlmesh run` is ready.
pub fn set_context(c: Context) {
    let _ = CONTEXT.set(c);
}

/// Hands this process's listeners, tunnels and registrations to the binary
/// installed at its path. Ok: what was handed over (this process then
/// exits 0, within a second); Err: why not (this process serves on).
pub async fn upgrade() -> Result<String, String> {
    let Some(ctx) = CONTEXT.get() else {
        return Err("erlmesh is still starting; try again when it is ready".into());
    };
    if BUSY.swap(true, Ordering::SeqCst) {
        return Err("an upgrade is already under way".into());
    }
    let result = run(ctx).await;
    if result.is_err() {
        BUSY.store(false, Ordering::SeqCst);
    }
    result
}

async fn run(ctx: &Context) -> Result<String, String> {
    let h = handoff();
    let sock = ctx.state_dir.join(SOCKET_FILE);
    let listener = bind_private(&sock).await?;
    info!(exe = %ctx.exe.display(), "upgrade: starting the installed binary");
    let mut child = tokio::process::Command::new(&ctx.exe)
        .args(&ctx.args)
        .arg("--take-over")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", ctx.exe.display()))?;
    let pid = child.id().unwrap_or(0);
    let outcome = hand_to(&mut child, pid, listener, ctx).await;
    let _ = std::fs::remove_file(&sock);
    match outcome {
        Ok(done) => {
            h.set_phase(Phase::Handed);
            // systemd follows the new process (NotifyAccess=main: the main
            // process may name its successor).
            if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::MainPid(pid)]) {
                warn!(error = %e, "cannot tell systemd the new main process");
            }
            info!(new_pid = pid, "{done}; this process exits");
            tokio::spawn(async {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                std::process::exit(0);
            });
            Ok(done)
        }
        Err(why) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            h.reports.lock().expect("handoff lock").clear();
            h.set_phase(Phase::Running);
            warn!(reason = %why, "upgrade failed; this process serves on as before");
            Err(why)
        }
    }
}

/// A Unix socket in state_dir that only this process's user may open.
async fn bind_private(path: &std::path::Path) -> Result<tokio::net::UnixListener, String> {
    let p = path.to_owned();
    let std_listener = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(&p);
        let l = std::os::unix::net::UnixListener::bind(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{}: cannot bind the upgrade socket: {e}", path.display()))?;
    tokio::net::UnixListener::from_std(std_listener).map_err(|e| e.to_string())
}

/// Waits for the child on the socket, freezes, sends the state and waits
/// for the child to be ready. Ok: the summary.
async fn hand_to(
    child: &mut tokio::process::Child,
    pid: u32,
    listener: tokio::net::UnixListener,
    ctx: &Context,
) -> Result<String, String> {
    let stream = tokio::select! {
        r = tokio::time::timeout(CONNECT_WAIT, listener.accept()) => match r {
            Ok(Ok((s, _))) => s,
            Ok(Err(e)) => return Err(format!("upgrade socket: {e}")),
            Err(_) => return Err(format!("the new process did not connect within {CONNECT_WAIT:?}")),
        },
        status = child.wait() => return Err(format!("the new binary exited before taking over ({})", show(status))),
    };
    let stream = stream.into_std().map_err(|e| e.to_string())?;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    match fds::peer_pid(&stream) {
        Ok(p) if p == pid => {}
        Ok(p) => {
            return Err(format!(
                "process {p} connected to the upgrade socket, not the new process {pid}"
            ))
        }
        Err(e) => return Err(format!("upgrade socket: {e}")),
    }
    let frozen_at = Instant::now();
    let (state, descriptors) = freeze(ctx).await?;
    let judged: Vec<&super::FirewallState> = state.tunnels.iter().filter_map(|t| t.firewall.as_ref()).collect();
    let summary = format!(
        "handed {} listener(s), {} tunnel(s) ({} under a dist policy, {} message(s) in fragments), {} registration(s) \
         and {} atom(s) counted for restricted peers to process {pid}",
        state.listeners.len(),
        state.tunnels.len(),
        judged.len(),
        judged.iter().map(|f| f.in_fragments).sum::<usize>(),
        state.registrations.len(),
        state.atoms.total,
    );
    let send = tokio::task::spawn_blocking(move || send_and_wait(stream, &state, descriptors));
    tokio::pin!(send);
    let sent = tokio::select! {
        r = &mut send => r,
        status = child.wait() => {
            // It exited: its last word, when it said one, tells why.
            match tokio::time::timeout(std::time::Duration::from_secs(1), &mut send).await {
                Ok(Ok(Err(why))) => Ok(Err(why)),
                _ => Ok(Err(format!("the new process exited before it was ready ({})", show(status)))),
            }
        }
    };
    match sent {
        Ok(Ok(())) => Ok(format!(
            "{summary}; tunnels paused {} ms",
            frozen_at.elapsed().as_millis()
        )),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(e.to_string()),
    }
}

fn show(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Freezes every participant and gathers their reports into the state.
async fn freeze(ctx: &Context) -> Result<(State, Vec<OwnedFd>), String> {
    let h = handoff();
    h.reports.lock().expect("handoff lock").clear();
    h.set_phase(Phase::Frozen);
    let deadline = tokio::time::Instant::now() + FREEZE_WAIT;
    loop {
        let notified = h.reported.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (have, want) = (
            h.reports.lock().expect("handoff lock").len(),
            h.participants.load(Ordering::SeqCst),
        );
        if have >= want {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(format!(
                "{} of {want} listeners, tunnels and registrations did not stop between records within {FREEZE_WAIT:?} \
                 (a node or peer not reading?)",
                want - have
            ));
        }
    }
    let reports = std::mem::take(&mut *h.reports.lock().expect("handoff lock"));
    let mut state = State {
        version: STATE_VERSION,
        fds: 0,
        listeners: Vec::new(),
        tunnels: Vec::new(),
        registrations: Vec::new(),
        learnt: ctx.mesh.learnt(),
        counters: ctx.metrics.counters(),
        atoms: ctx.mesh.memories().export_atoms(),
    };
    let mut descriptors = Vec::new();
    let mut take = |fd: OwnedFd| {
        descriptors.push(fd);
        descriptors.len() - 1
    };
    for r in reports {
        match r {
            Report::Refused(why) => return Err(format!("cannot hand over {why}")),
            Report::Listener { addr, node, fd } => {
                let fd = take(fd);
                state.listeners.push(ListenerState { addr, node, fd });
            }
            Report::Registration { info, creation, fd } => {
                let fd = take(fd);
                state.registrations.push(RegistrationState { info, creation, fd });
            }
            Report::Tunnel {
                meta,
                record,
                firewall,
                out_done,
                back_done,
                local,
                remote,
            } => {
                let (local, remote) = (take(local), take(remote));
                state.tunnels.push(TunnelState {
                    meta,
                    record: *record,
                    firewall: firewall.map(|f| *f),
                    out_done,
                    back_done,
                    local,
                    remote,
                });
            }
        }
    }
    state.fds = descriptors.len();
    Ok((state, descriptors))
}

/// Sends the state and the descriptors, then waits for the new process's
/// word: `ready`, or `refused: WHY`.
fn send_and_wait(
    mut stream: std::os::unix::net::UnixStream,
    state: &State,
    descriptors: Vec<OwnedFd>,
) -> Result<(), String> {
    let mut json = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| format!("handing over: {e}");
    let sent = (|| {
        stream.write_all(&(json.len() as u64).to_be_bytes())?;
        stream.write_all(&json)?;
        fds::send(&stream, &descriptors)
    })();
    zeroize::Zeroize::zeroize(&mut json);
    drop(descriptors);
    // A new process that refuses the state says why and closes before it
    // takes the descriptors: a send that fails (broken pipe) may still
    // have that word waiting, and it names the cause better.
    // (After a failed send the word is there at once, or never.)
    let wait = if sent.is_err() { REFUSAL_WAIT } else { READY_WAIT };
    stream.set_read_timeout(Some(wait)).map_err(io)?;
    let mut line = String::new();
    let mut r = std::io::BufReader::new(&stream).take(4096);
    let word = r.read_line(&mut line);
    if let Err(e) = sent {
        return match word {
            Ok(n) if n > 0 && line.trim() != "ready" => Err(refusal(&line)),
            _ => Err(io(e)),
        };
    }
    match word {
        Ok(0) => Err("the new process closed the upgrade socket without a word".into()),
        Ok(_) if line.trim() == "ready" => Ok(()),
        Ok(_) => Err(refusal(&line)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Err(format!("the new process did not report ready within {READY_WAIT:?}"))
        }
        Err(e) => Err(io(e)),
    }
}

/// The old process's account of a new process's word other than `ready`.
fn refusal(line: &str) -> String {
    format!(
        "the new process {}",
        line.trim()
            .strip_prefix("refused: ")
            .map_or(line.trim().to_owned(), |w| format!("refused: {w}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_state() -> State {
        State {
            version: STATE_VERSION,
            fds: 0,
            listeners: Vec::new(),
            tunnels: Vec::new(),
            registrations: Vec::new(),
            learnt: Vec::new(),
            counters: Vec::new(),
            atoms: Default::default(),
        }
    }

    /// A new process that refuses and closes before the old one has sent
    /// everything: the old one's send fails (broken pipe), and it reports
    /// the new process's reason, not the pipe.
    #[test]
    fn a_refusal_written_before_the_send_failed_is_the_reason_given() {
        let (old, mut new) = std::os::unix::net::UnixStream::pair().unwrap();
        writeln!(new, "refused: state format version 1 (this build reads version 99)").unwrap();
        drop(new);
        let err = send_and_wait(old, &empty_state(), Vec::new()).unwrap_err();
        assert_eq!(
            err,
            "the new process refused: state format version 1 (this build reads version 99)"
        );
    }

    /// A new process that reads the state, then refuses (the usual order).
    #[test]
    fn a_refusal_after_the_state_is_the_reason_given() {
        let (old, mut new) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut len = [0u8; 8];
            new.read_exact(&mut len).unwrap();
            let mut json = vec![0u8; u64::from_be_bytes(len) as usize];
            new.read_exact(&mut json).unwrap();
            writeln!(new, "refused: malformed state").unwrap();
        });
        let err = send_and_wait(old, &empty_state(), Vec::new()).unwrap_err();
        peer.join().unwrap();
        assert_eq!(err, "the new process refused: malformed state");
    }

    /// A peer gone without a word: the send's own error is the reason.
    #[test]
    fn a_peer_gone_without_a_word_reports_the_send_error() {
        let (old, new) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(new);
        let err = send_and_wait(old, &empty_state(), Vec::new()).unwrap_err();
        assert!(err.starts_with("handing over: "), "{err}");
    }
}
