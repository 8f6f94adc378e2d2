//! `ferry-es-double`: the Elasticsearch double of `ferry_testkit::elastic` as a process, for
//! benchmarks that need an Elasticsearch the appliance can create keys on.
//!
//! `ferry-es-double [--latency-ms N] [--plain] [--ca-out PATH] [--token-out PATH]` starts the
//! double, writes its CA (PEM; not with `--plain`) and a service token of
//! `elastic/fleet-server`, prints its URL on one line, and serves until killed.

use ferry_testkit::elastic::{DoubleOptions, ElasticDouble};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str =
    "usage: ferry-es-double [--latency-ms N] [--plain] [--ca-out PATH] [--token-out PATH]";

fn main() {
    let mut options = DoubleOptions::default();
    let (mut ca_out, mut token_out) = (None::<PathBuf>, None::<PathBuf>);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--latency-ms" => {
                let ms = value("--latency-ms").parse().unwrap_or_else(|_| {
                    eprintln!("--latency-ms takes a whole number of milliseconds\n{USAGE}");
                    std::process::exit(2)
                });
                options.latency = Duration::from_millis(ms);
            }
            "--plain" => options.tls = false,
            "--ca-out" => ca_out = Some(value("--ca-out").into()),
            "--token-out" => token_out = Some(value("--token-out").into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    let double = ElasticDouble::start(options);
    if let Some(path) = ca_out {
        double.write_ca(&path);
    }
    if let Some(path) = token_out {
        std::fs::write(&path, double.service_token())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", double.url()).expect("stdout");
    stdout.flush().expect("stdout");
    // Serve until a signal ends the process (SIGTERM's default action); stdin is not watched,
    // as a benchmark may start this with stdin closed.
    loop {
        std::thread::park();
    }
}
