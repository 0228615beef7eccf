//! `model-server --listen ADDR [--listen ADDR] [--delay-ms N]`: the test/demo HTTP server.
use std::{net::SocketAddr, time::Duration};

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on (repeatable), e.g. 198.18.0.2:8080 or [fd00::2]:8080.
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,
    /// Delay before each response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(mirror_tests::model_server::serve(args.listen, Duration::from_millis(args.delay_ms)))?;
    Ok(())
}
