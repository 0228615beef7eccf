//! `model-server --listen ADDR [--listen ADDR] [--delay-ms N] [--model-name N --model-version V
//! --disagree-percent P]`: the test/demo HTTP server (Open Inference Protocol + sized bodies).
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
    /// Model name in inference answers.
    #[arg(long, default_value = "demo")]
    model_name: String,
    /// Model version in inference answers.
    #[arg(long, default_value = "1")]
    model_version: String,
    /// Share of rows (0-100) whose top label this model flips (a candidate that disagrees).
    #[arg(long, default_value_t = 0.0)]
    disagree_percent: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let model = mirror_tests::model_server::Model {
        name: args.model_name,
        version: args.model_version,
        disagree_percent: args.disagree_percent,
    };
    runtime.block_on(mirror_tests::model_server::serve(
        args.listen,
        Duration::from_millis(args.delay_ms),
        model,
    ))?;
    Ok(())
}
