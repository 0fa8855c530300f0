use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = ecogate::cli::Cli::parse();
    ecogate::logging::init(&cli.log);
    match ecogate::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
