//! The command line: clap definitions, whose doc comments are the --help.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// erlmesh: carries unmodified Erlang/OTP distribution between hosts inside
/// mutually authenticated TLS. One per host, next to the nodes.
#[derive(Debug, Parser)]
#[command(name = "erlmesh", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in the foreground until SIGINT or SIGTERM.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Log line format. RUST_LOG sets the level (default: info).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Take over from the erlmesh at this upgrade socket (what
        /// `erlmesh upgrade` starts; not for operators).
        #[arg(long, hide = true)]
        take_over: Option<PathBuf>,
    },
    /// Hand everything the running erlmesh for this config holds
    /// (listeners, open tunnels with their TLS state, local nodes' EPMD
    /// registrations, learnt hosts) to the binary now installed at its
    /// path, with no nodedown; the old process then exits. Prints what was
    /// handed over, or exits 1 with the reason (the old process then
    /// serves on as before).
    Upgrade {
        /// The config file of the running erlmesh (for its state_dir).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print `export NAME='value'` lines for this host's nodes:
    /// eval "$(erlmesh env --config FILE)" before starting erl.
    Env {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show what a running erlmesh knows: its peers, their state and
    /// certificate expiry, and the tunnels open per node pair.
    Status {
        /// The config file of the running erlmesh (for its state_dir).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the Prometheus metrics instead.
        #[arg(long)]
        metrics: bool,
    },
    /// Check this host's setup and explain each problem with its fix:
    /// config, certificate (chain, name, expiry), each peer (reachable,
    /// authenticates), EPMD and nodes on loopback only, the resolver file,
    /// and with --node how a running node resolves the peer hosts.
    /// Exits 1 when a check fails.
    Doctor {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// A running local node (name or name@host) to ask how it resolves
        /// each peer host.
        #[arg(long)]
        node: Option<String>,
        /// That node's cookie (default: ~/.erlang.cookie).
        #[arg(long)]
        cookie: Option<String>,
    },
    /// Make the cluster CA and host certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The kernel rules of transparent interception (nftables table
    /// `inet erlmesh`), for an init step and for operators. `erlmesh run`
    /// applies them itself and keeps them in step with the peer table.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Write a config file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Replace erlmesh's table with the rules for this config: its static
    /// peers' addresses (resolved now) and the distribution ports already
    /// learnt. Needs CAP_NET_ADMIN. Applying twice gives the same ruleset.
    Apply {
        /// The config file (TOML), with interception = "transparent".
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print erlmesh's table as the kernel holds it (exit 1 when absent).
    Show {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove erlmesh's table: nodes' connections to peer hosts go out
    /// plainly again. No other table is touched.
    Remove {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a starting config for HOST with the certificates `erlmesh cert`
    /// made in --certs (ca.pem, HOST.pem, HOST.key), checked as `erlmesh
    /// run` would check it. Refuses to overwrite without --force.
    Init {
        /// This host's name (the host part of its nodes' names).
        #[arg(long)]
        host: String,
        /// Where the config goes.
        #[arg(long, short)]
        output: PathBuf,
        /// The directory of ca.pem, HOST.pem and HOST.key.
        #[arg(long)]
        certs: PathBuf,
        /// The TLS port peers connect to.
        #[arg(long, default_value = "0.0.0.0:4370")]
        listen: String,
        /// The EPMD port local nodes use.
        #[arg(long, default_value_t = 4369)]
        epmd_port: u16,
        /// Where the resolver files and the control socket live.
        #[arg(long, default_value = "/run/erlmesh")]
        state_dir: String,
        /// A peer host, HOST=ADDRESS (repeatable).
        #[arg(long = "peer", value_name = "HOST=ADDRESS")]
        peers: Vec<String>,
        /// A host to join through (repeatable).
        #[arg(long = "seed", value_name = "ADDRESS")]
        seeds: Vec<String>,
        /// More top-level TOML (tables such as [dist_policies.NAME] included).
        #[arg(long, default_value = "")]
        extra: String,
        /// Every peer holds to this dist policy (defined in --extra).
        #[arg(long)]
        dist_policy: Option<String>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a new cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600).
    Ca {
        /// Directory to write to (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = crate::tls::certs::DEFAULT_CA_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Show a certificate: subject, names, validity, key type, fingerprint
    /// and, with --ca, whether it chains to that CA. Exits 1 when it is
    /// expired, not yet valid or does not chain.
    Show {
        /// The certificate (PEM).
        file: PathBuf,
        /// The cluster CA to check it against.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Revoke HOST's current certificate (DIR/HOST.pem): add it to
    /// DIR/crl.pem (created when missing), signed by DIR/ca.pem and
    /// DIR/ca.key. Copy crl.pem to every host's `tls.crl`: erlmesh picks it
    /// up within seconds and closes that host's tunnels.
    Revoke {
        /// Directory holding the CA and HOST.pem; crl.pem is written there.
        #[arg(long)]
        dir: PathBuf,
        /// The host whose certificate is revoked.
        #[arg(long)]
        host: String,
    },
    /// Write DIR/crl.pem anew, signed by DIR/ca.pem and DIR/ca.key, keeping
    /// the certificates it lists (none when new): the first CRL of a
    /// cluster, for `tls.crl` before anything is revoked.
    Crl {
        /// Directory holding the CA; crl.pem is written there.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue DIR/HOST.pem and DIR/HOST.key (mode 0600) for one host, signed
    /// by DIR/ca.pem and DIR/ca.key. HOST is the host part of that host's
    /// node names (hostb, or hostb.example.com for long names).
    Issue {
        /// Directory holding the CA, and where the new files go.
        #[arg(long)]
        dir: PathBuf,
        /// The host name the certificate names.
        #[arg(long)]
        host: String,
        /// An address of the host the certificate names too (repeatable;
        /// IPv4 or IPv6).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = crate::tls::certs::DEFAULT_HOST_DAYS)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}
