//! Parse the command line, set up logging, dispatch.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use erlmesh::cli::{CertCommand, Cli, Command, LogFormat};
use erlmesh::config::{Config, EpmdMode};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erlmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime for `run`: one thread by default (the measured best on small
/// hosts, where the nodes need the cores), else a work-stealing pool.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    b.enable_all().build()
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            log_format,
            take_over,
        } => run(&config, log_format, take_over.as_deref()),
        Command::Upgrade { config } => {
            let config = load(&config)?;
            let sock = config.state_dir.join(erlmesh::ops::control::SOCKET_FILE);
            let (ok, body) = erlmesh::ops::control::post(&sock, "/upgrade", erlmesh::upgrade::command_wait())
                .with_context(|| {
                    format!(
                        "{}: cannot reach erlmesh (is `erlmesh run` running with this config?)",
                        sock.display()
                    )
                })?;
            if !ok {
                anyhow::bail!("upgrade refused: {}", body.trim());
            }
            println!("{}", body.trim());
            Ok(())
        }
        Command::Status { config, metrics } => {
            let config = load(&config)?;
            let sock = config.state_dir.join(erlmesh::ops::control::SOCKET_FILE);
            let body = erlmesh::ops::control::request(&sock, if metrics { "/metrics" } else { "/status" })
                .with_context(|| {
                    format!(
                        "{}: cannot reach erlmesh (is `erlmesh run` running with this config?)",
                        sock.display()
                    )
                })?;
            print!("{body}");
            Ok(())
        }
        Command::Doctor { config, node, cookie } => {
            let config = load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let checks = rt.block_on(erlmesh::ops::doctor::run(&config, node.as_deref(), cookie.as_deref()));
            print!("{}", erlmesh::ops::doctor::render(&checks));
            if checks.iter().any(|c| !c.ok) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Env { config } => {
            let config = load(&config)?;
            print!("{}", env_lines(&config));
            Ok(())
        }
        Command::Cert(c) => cert(c),
        Command::Rules(c) => rules(c),
        Command::Config(c) => config_init(c),
    }
}

/// `erlmesh config init`: a config rendered by the one writer, checked
/// as `erlmesh run` checks it, then written.
fn config_init(c: erlmesh::cli::ConfigCommand) -> anyhow::Result<()> {
    let erlmesh::cli::ConfigCommand::Init {
        host,
        output,
        certs,
        listen,
        epmd_port,
        state_dir,
        peers,
        seeds,
        extra,
        dist_policy,
        force,
    } = c;
    // The certificates' directory as given on the command line (relative to
    // here), not relative to the config file as the config's paths are.
    let certs = std::path::absolute(&certs).with_context(|| format!("--certs {}", certs.display()))?;
    let path = |f: String| certs.join(f).to_string_lossy().into_owned();
    let peers = peers
        .iter()
        .map(|p| match p.split_once('=') {
            Some((h, a)) if !h.is_empty() && !a.is_empty() => Ok(erlmesh::config::SketchPeer {
                host: h.to_owned(),
                address: a.to_owned(),
                dist_policy: dist_policy.clone(),
                ..Default::default()
            }),
            _ => anyhow::bail!("--peer {p:?}: expected HOST=ADDRESS"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sketch = erlmesh::config::Sketch {
        ca: path("ca.pem".into()),
        cert: path(format!("{host}.pem")),
        key: path(format!("{host}.key")),
        host,
        listen,
        epmd_port,
        state_dir,
        seeds,
        peers,
        extra,
        tls_extra: String::new(),
    };
    let text = sketch.render();
    Config::parse(&output, &text)?;
    if output.exists() && !force {
        anyhow::bail!("{}: exists (use --force to replace it)", output.display());
    }
    std::fs::write(&output, text).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

/// `erlmesh rules`: the kernel rules of transparent interception.
fn rules(c: erlmesh::cli::RulesCommand) -> anyhow::Result<()> {
    use erlmesh::cli::RulesCommand;
    use erlmesh::transparent::nft;
    match c {
        RulesCommand::Apply { config } => {
            let config = load(&config)?;
            if config.interception != erlmesh::config::Interception::Transparent {
                anyhow::bail!(
                    "{}: interception: rules are for interception = \"transparent\"",
                    config.file.display()
                );
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let rules = rt.block_on(erlmesh::transparent::static_rules(&config));
            nft::apply(&rules)?;
            println!(
                "applied table inet erlmesh: {} peer addresses, {} learnt distribution ports",
                rules.peers.len(),
                rules.dist.len()
            );
            Ok(())
        }
        RulesCommand::Show { config } => {
            load(&config)?;
            match nft::show()? {
                Some(t) => {
                    print!("{t}");
                    Ok(())
                }
                None => anyhow::bail!("no table inet erlmesh: the rules are not applied"),
            }
        }
        RulesCommand::Remove { config } => {
            load(&config)?;
            if nft::remove()? {
                println!("removed table inet erlmesh");
            } else {
                println!("no table inet erlmesh: nothing to remove");
            }
            Ok(())
        }
    }
}

/// `erlmesh run`: logging, config, descriptor limit, the runtime, and the
/// proxy until SIGTERM or SIGINT.
fn run(config: &Path, log_format: LogFormat, take_over: Option<&Path>) -> anyhow::Result<()> {
    init_logging(log_format);
    let config = load(config).inspect_err(|e| refuse(take_over, &e.to_string()))?;
    if let Some(sock) = take_over {
        erlmesh::upgrade::take::receive(sock).map_err(|why| anyhow::anyhow!("cannot take over: {why}"))?;
    }
    erlmesh::app::precheck(&config);
    let nofile = erlmesh::app::raise_descriptor_limit(&config)?;
    tracing::debug!(nofile, needed = config.descriptors_needed(), "open-file limit");
    let rt = runtime(config.threads)?;
    erlmesh::tls::warm_rng();
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let signals = tokio::spawn(async move {
            if let Err(e) = erlmesh::app::shutdown_signal().await {
                tracing::error!(error = %e, "cannot watch signals");
            }
            let _ = tx.send(());
        });
        let r = erlmesh::app::run(config, async {
            let _ = rx.await;
        })
        .await;
        signals.abort();
        r
    })
    .inspect_err(|e| refuse(take_over, &e.to_string()))?;
    Ok(())
}

/// A process taking over that cannot start tells the old one why.
fn refuse(take_over: Option<&Path>, why: &str) {
    if take_over.is_some() {
        erlmesh::upgrade::take::refuse(why);
    }
}

/// `erlmesh cert ...`: the cluster CA, host certificates, CRLs.
fn cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::Ca { dir, days, force } => {
            let w = erlmesh::tls::certs::make_ca(&dir, days, force)?;
            println!(
                "wrote {} and {} (keep the key offline; it signs every host)",
                w.cert.display(),
                w.key.display()
            );
            Ok(())
        }
        CertCommand::Show { file, ca } => {
            let shown = erlmesh::tls::certs::show(&file, ca.as_deref())?;
            print!("{}", shown.report);
            if !shown.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        CertCommand::Crl { dir } => {
            let r = erlmesh::tls::certs::refresh_crl(&dir)?;
            println!(
                "wrote {}: it lists {} revoked certificate(s)",
                r.crl.display(),
                r.listed
            );
            Ok(())
        }
        CertCommand::Revoke { dir, host } => {
            let r = erlmesh::tls::certs::revoke(&dir, &host)?;
            if r.already {
                println!(
                    "{host}'s certificate (serial {}) is already in {}; nothing changed",
                    r.serial,
                    r.crl.display()
                );
            } else {
                println!(
                    "revoked {host}'s certificate (serial {}): {} now lists {} certificate(s); copy it to every host's tls.crl",
                    r.serial,
                    r.crl.display(),
                    r.listed
                );
            }
            Ok(())
        }
        CertCommand::Issue {
            dir,
            host,
            ips,
            days,
            force,
        } => {
            let w = erlmesh::tls::certs::issue_naming(&dir, &host, &ips, days, force)?;
            println!("wrote {} and {}", w.cert.display(), w.key.display());
            Ok(())
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let abs = std::fs::canonicalize(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Config::load(&abs)?)
}

/// The environment this host's nodes need, as sh `export` lines.
fn env_lines(c: &Config) -> String {
    if c.interception == erlmesh::config::Interception::Transparent {
        return "# interception = \"transparent\": nodes need no environment from erlmesh\n".into();
    }
    let mut zflags = String::from("-kernel inet_dist_use_interface {127,0,0,1}");
    let mut out = String::new();
    let mut export = |k: &str, v: &str| out.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
    export("ERL_INETRC", &c.inetrc_path().display().to_string());
    export("ERL_EPMD_PORT", &c.epmd_port.to_string());
    match c.epmd {
        // Without epmd a node started while erlmesh is down fails instead
        // of starting an epmd that would take the port (DESIGN.md §4).
        EpmdMode::Embedded => zflags.push_str(" -start_epmd false"),
        EpmdMode::System => export("ERL_EPMD_ADDRESS", "127.0.0.1"),
    }
    export("ERL_ZFLAGS", &zflags);
    out
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}
