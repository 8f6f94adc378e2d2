//! `ferry-sim`: a fleet of simulated Elastic Agents for load tests and benchmarks, and a probe
//! that measures the appliance's answer times from outside the loaded loop.

mod agent;
mod conn;
mod flood;
mod mirror;
mod probe;
mod stats;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-sim",
    version,
    about = "Simulate a fleet of Elastic Agents against a Fleet Server (such as ferry-appliance)",
    long_about = "Simulate a fleet of Elastic Agents against a Fleet Server (such as ferry-appliance).\n\n\
        `run` starts N agents, each a task with its own connection, that enroll, long-poll check \
        in (gzip bodies, ack_token), acknowledge policies and actions, download and verify \
        upgrades from the mirror (archive, .sha512, .asc), upload diagnostics, and unenroll when \
        told. Every --report-ms it prints one JSON line on stdout: counters, errors by kind, and \
        how many agents hold each policy revision and version.\n\n\
        `probe` measures enroll, ack and status answer times (and the admin API's status, when \
        given its socket or URL) from its own connections, for comparing an idle and a loaded \
        appliance.\n\n\
        `flood` runs hostile clients (slow heads and bodies, oversized requests, forged keys, \
        agents dropping parked check-ins, and a compromised agent's attacks: wrong replace \
        tokens, unknown enrollment tokens, held descriptors, many check-ins of one key, bulky \
        check-ins) for a while and prints what the server answered.",
    after_help = "Example:\n  ferry-appliance tokens create --policy default-policy\n  \
        ferry-sim run --url=https://127.0.0.1:8220 --enrollment-token=TOKEN \\\n      \
        --certificate-authorities=/var/lib/ferry/tls/ca.pem --agents 1000"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a fleet of simulated agents until interrupted (or for --duration).
    Run(RunArgs),
    /// Measure enroll, ack and status latencies (and the admin API's status), then print them
    /// as JSON.
    Probe(ProbeArgs),
    /// Run hostile clients (slow heads and bodies, oversized requests, forged keys, agents
    /// that drop their check-ins, wrong replace tokens, unknown enrollment tokens, held
    /// descriptors, many check-ins of one key, bulky check-ins) for --seconds, then print what
    /// the server answered as JSON.
    Flood(FloodArgs),
    /// Write a synthetic Elastic download site (fake agent archives with real .sha512 and
    /// PGP .asc, and the PGP key) for demos and benchmarks.
    FakeMirror(MirrorArgs),
}

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The folder to write (`downloads/…` and `GPG-KEY-ferry-demo` inside).
    #[arg(long)]
    pub out: PathBuf,
    /// Agent versions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "9.1.2,9.2.2")]
    pub versions: Vec<String>,
    /// Platforms, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "linux-x86_64")]
    pub platforms: Vec<String>,
    /// Size of each fake archive in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The Fleet URL agents would be given (`https://…` or `http://…`).
    #[arg(long)]
    pub url: String,
    /// CA certificate(s) (PEM) to trust for the Fleet API, as `elastic-agent install
    /// --certificate-authorities` (downloads trust only the CA the policy gives).
    #[arg(long, value_name = "PEM", visible_alias = "certificate-authorities")]
    pub ca: Option<PathBuf>,
    /// An enrollment token (`elastic-agent install --enrollment-token`).
    #[arg(long, env = "FERRY_SIM_TOKEN", visible_alias = "enrollment-token")]
    pub token: String,
    /// Spread connections over this many loopback source addresses (127.1.x.y); 0 lets the
    /// kernel choose.
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,
    /// How many agents.
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// New agents started per second.
    #[arg(long, default_value_t = 200.0)]
    pub ramp: f64,
    /// The version agents start at (their User-Agent).
    #[arg(long, default_value = "9.1.2")]
    pub version: String,
    /// The platform whose archive upgrades download.
    #[arg(long, default_value = "linux-x86_64")]
    pub platform: String,
    /// A PGP public key to verify upgrades with when the server has none to give (plain HTTP).
    #[arg(long, value_name = "FILE")]
    pub pgp_key: Option<PathBuf>,
    /// First wait after a failed check-in, in seconds (real agents: 60), doubling up to
    /// --backoff-max.
    #[arg(long, default_value_t = 60.0)]
    pub backoff: f64,
    /// The longest wait between failed check-ins, in seconds (real agents: 600).
    #[arg(long, default_value_t = 600.0)]
    pub backoff_max: f64,
    /// First wait after a refused enrollment, in seconds: a real agent waits this plus up to as
    /// much again, then doubles (Elastic Agent's equal-jitter backoff; real agents: 5).
    #[arg(long, default_value_t = 5.0)]
    pub enroll_backoff: f64,
    /// The longest wait between enrollment attempts, in seconds (real agents: 600).
    #[arg(long, default_value_t = 600.0)]
    pub enroll_backoff_max: f64,
    /// How long each agent takes to apply a new policy before it acks it, in milliseconds:
    /// `MIN-MAX`, drawn evenly, or one number. Elastic Agent acks a policy once it has applied
    /// it, apart from its check-ins, so a fleet's acks spread; its code fixes no duration, so
    /// the default spreads them over the second before the next check-in. `0` acks at once,
    /// all together: the hardest case for the server.
    #[arg(long, value_name = "MS", default_value = "0-1000", value_parser = parse_millis_range)]
    pub apply_ms: (Duration, Duration),
    /// Milliseconds between report lines.
    #[arg(long, default_value_t = 1000)]
    pub report_ms: u64,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Keep each agent's id and API key in this folder, and start agents found there as
    /// enrolled: a second run reconnects the same fleet at once, as agents do after a network
    /// outage or a restart of their hosts. Only the id and key are kept: an agent started so
    /// reports no policy revision until the appliance sends it a new one.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub target: Target,
    /// Seconds to measure.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Calls per second of each kind (status, ack, enroll, and admin status when
    /// --admin-socket or --admin-url is given), each kind in its own loop.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds to wait after the probe's own enrollment (it says `ferry-sim probe: enrolled` on
    /// stderr then) before measuring.
    #[arg(long, default_value_t = 0.0)]
    pub delay: f64,
    /// Enroll on a new connection each time, as a new agent does (default: the probe's
    /// keep-alive connection), so that a server no longer accepting connections shows.
    #[arg(long)]
    pub fresh_enroll: bool,
    /// The appliance's admin API socket (`DATA_DIR/admin.sock`): also times
    /// `GET /admin/v1/status` over it, on a new connection as the CLI makes.
    #[arg(long, value_name = "PATH", conflicts_with = "admin_url", requires = "admin_token_file")]
    pub admin_socket: Option<PathBuf>,
    /// The same over loopback TCP (`DATA_DIR/admin.url`, appliances before the socket).
    #[arg(long, value_name = "URL", requires = "admin_token_file")]
    pub admin_url: Option<String>,
    /// The admin token (`DATA_DIR/admin.token`), sent as `Authorization: Bearer`.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FloodArgs {
    #[command(flatten)]
    pub target: Target,
    /// Seconds to flood.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Which kinds of hostile client to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "slowloris,slow-body,oversize,keys,disconnect"
    )]
    pub kinds: Vec<flood::Kind>,
    /// Slowloris connections held at once (each sends its head a byte at a time).
    #[arg(long, default_value_t = 200)]
    pub slowloris: usize,
    /// Slow-body connections held at once (a whole check-in head declaring the route's 1 MiB,
    /// then a byte at a time).
    #[arg(long, default_value_t = 20)]
    pub slow_body: usize,
    /// Milliseconds between the bytes of slowloris and slow-body connections.
    #[arg(long, default_value_t = 1000)]
    pub slowloris_interval_ms: u64,
    /// Which oversized requests to send, comma-separated (default: all of head-16k,
    /// declared-32m, checkin-2m-length, checkin-2m-chunked, gzip-bomb).
    #[arg(long, value_delimiter = ',')]
    pub oversize_variants: Vec<String>,
    /// Connections sending oversized requests, one after another.
    #[arg(long, default_value_t = 2)]
    pub oversize_connections: usize,
    /// Requests per second with forged or misused keys, in total.
    #[arg(long, default_value_t = 2000.0)]
    pub key_rate: f64,
    /// Keep-alive connections the forged keys are spread over.
    #[arg(long, default_value_t = 8)]
    pub key_connections: usize,
    /// Wrong-replace-token enrollments per second, in total (naming the flood's own agent).
    #[arg(long, default_value_t = 20.0)]
    pub replace_rate: f64,
    /// Keep-alive connections they are spread over: each waits for its answer, so more than
    /// the server's 16 blocking threads keep all of them busy when it is slower than the rate.
    #[arg(long, default_value_t = 32)]
    pub replace_connections: usize,
    /// Unknown-enrollment-token enrollments per second, in total.
    #[arg(long, default_value_t = 640.0)]
    pub bogus_rate: f64,
    /// Keep-alive connections they are spread over (each from the next source address).
    #[arg(long, default_value_t = 8)]
    pub bogus_connections: usize,
    /// Bare TCP connections opened and held, never sending a byte (the flood needs that many
    /// open files of its own).
    #[arg(long, default_value_t = 5000)]
    pub hold_fds: usize,
    /// Check-ins one agent key opens at once, each on its own connection.
    #[arg(long, default_value_t = 50)]
    pub parked_per_key: usize,
    /// Agents sending gzipped check-ins of ~20 KiB that inflate to 18 MiB of stored fields,
    /// one a second each.
    #[arg(long, default_value_t = 4)]
    pub bulky_agents: usize,
    /// Agents that enroll, then open check-ins and drop them while parked.
    #[arg(long, default_value_t = 20)]
    pub disconnect_agents: usize,
    /// About how long (ms) such an agent lets a check-in park before dropping it.
    #[arg(long, default_value_t = 500)]
    pub disconnect_after_ms: u64,
}

/// The enrollment body of a stock agent of `version` on host `hostname` (the `ferry-wire`
/// sample of its era: no tags, so `"tags":null`).
pub fn enroll_body(version: &str, hostname: &str) -> String {
    ferry_wire::for_agent(ferry_wire::Kind::Enroll, version)
        .render(
            &ferry_wire::Vars::new()
                .set("version", version)
                .set("enrollment_token", "")
                .set("hostname", hostname),
        )
        .json
}

/// Loopback source addresses 127.1.x.y, `n` of them: the simulated fleet's and the probe's.
fn sources(n: usize) -> Vec<IpAddr> {
    sources_in(1, n)
}

/// Loopback source addresses 127.`net`.x.y, `n` of them.
fn sources_in(net: u8, n: usize) -> Vec<IpAddr> {
    (0..n).map(|i| IpAddr::from([127, net, (i / 250) as u8, (i % 250 + 1) as u8])).collect()
}

fn tls_for(target: &Target) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    match &target.ca {
        Some(ca) => Ok(Some(conn::client_tls(ca)?)),
        None if target.url.starts_with("https://") => {
            anyhow::bail!("{} is https: give the CA with --ca", target.url)
        }
        None => Ok(None),
    }
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Probe(args) => probe::run(args).await,
            Command::Flood(args) => flood::run(args).await,
            Command::FakeMirror(args) => {
                for path in mirror::write(&args.out, &args.versions, &args.platforms, args.size)? {
                    println!("{path}");
                }
                Ok(())
            }
        }
    })
}

/// `MIN-MAX` or `N` milliseconds, as a range of durations.
fn parse_millis_range(s: &str) -> Result<(Duration, Duration), String> {
    let ms = |t: &str| {
        t.trim().parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{t:?}: {e}"))
    };
    let (least, most) = match s.split_once('-') {
        Some((a, b)) => (ms(a)?, ms(b)?),
        None => (ms(s)?, ms(s)?),
    };
    if least > most {
        return Err(format!("{s}: the least is more than the most"));
    }
    Ok((least, most))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let pgp_key = match &args.pgp_key {
        Some(path) => Some(ferry_artifacts::Keyring::from_armored(
            &std::fs::read_to_string(path)?,
            &path.display().to_string(),
        )?),
        None => None,
    };
    let fleet = Arc::new(agent::Fleet {
        api: Arc::new(conn::Endpoint::parse(&args.target.url)?),
        tls: tls_for(&args.target)?,
        token: args.target.token.clone(),
        version: args.version.clone(),
        platform: args.platform.clone(),
        sources: sources(args.target.sources),
        stats: Arc::new(stats::Stats::default()),
        backoff_init: Duration::from_secs_f64(args.backoff),
        backoff_max: Duration::from_secs_f64(args.backoff_max),
        enroll_backoff_init: Duration::from_secs_f64(args.enroll_backoff),
        enroll_backoff_max: Duration::from_secs_f64(args.enroll_backoff_max),
        apply: args.apply_ms,
        pgp_key,
        state: args.state.clone(),
    });
    if let Some(dir) = &args.state {
        std::fs::create_dir_all(dir)?;
    }
    let start = Instant::now();
    let stats = Arc::clone(&fleet.stats);
    let report_every = Duration::from_millis(args.report_ms.max(10));
    let reporter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(report_every);
        loop {
            tick.tick().await;
            println!("{}", stats.line(start));
        }
    });
    let ramp = Duration::from_secs_f64(1.0 / args.ramp.max(0.001));
    let spawner = tokio::spawn({
        let fleet = Arc::clone(&fleet);
        async move {
            let mut tick = tokio::time::interval(ramp);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for n in 0..args.agents {
                tick.tick().await;
                tokio::spawn(agent::run(Arc::clone(&fleet), n));
            }
        }
    });
    match args.duration {
        Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    spawner.abort();
    reporter.abort();
    println!("{}", fleet.stats.line(start));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap's own checks of the command tree (duplicate names, conflicts naming missing
    /// arguments, bad defaults...), which a debug build otherwise makes only for the subcommand
    /// it parses.
    #[test]
    fn the_command_tree_passes_clap_checks() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn apply_times_are_a_range_or_one_number_in_milliseconds() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        assert_eq!(super::parse_millis_range("0-1000"), Ok((ms(0), ms(1000))));
        assert_eq!(super::parse_millis_range("250"), Ok((ms(250), ms(250))));
        for bad in ["1000-0", "-5", "1-2-3", "a-b", ""] {
            assert!(super::parse_millis_range(bad).is_err(), "{bad}");
        }
    }
}
