//! `ecogate user add|list|passwd --data-dir DIR`: operator accounts from the command line
//! (the first admin, a forgotten password). Passwords come from an environment variable or
//! stdin, never from the command line (it would sit in the shell history and `ps`).

use super::auth::{Role, UserStore};
use crate::ledger::events::{EventBody, UserChange};
use crate::ledger::Ledger;
use anyhow::Context as _;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Add an account.
    Add {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        username: String,
        /// guard, supervisor, env_manager, admin or inspector.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Read the password from this environment variable (else from stdin).
        #[arg(long)]
        password_env: Option<String>,
    },
    /// List accounts (never passwords).
    List {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Set a new password.
    Passwd {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        username: String,
        #[arg(long)]
        password_env: Option<String>,
    },
}

fn read_password(env: &Option<String>) -> anyhow::Result<String> {
    if let Some(v) = env {
        return std::env::var(v).with_context(|| format!("environment variable `{v}` is not set"));
    }
    eprintln!("password (one line on stdin; not echoed when piped):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn record(data_dir: &Path, change: UserChange) -> anyhow::Result<()> {
    let ledger = Ledger::open(data_dir)
        .with_context(|| format!("opening the ledger in {}", data_dir.display()))?;
    ledger
        .append_blocking(
            EventBody::UserChange(change),
            Vec::new(),
            chrono::Utc::now(),
        )
        .context("recording the change in the ledger")?;
    Ok(())
}

pub fn run(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            data_dir,
            username,
            role,
            display_name,
            password_env,
        } => {
            let Some(role) = Role::parse(&role) else {
                eprintln!("--role `{role}` is not one of guard, supervisor, env_manager, admin, inspector");
                return Ok(ExitCode::FAILURE);
            };
            let store = UserStore::open(&data_dir)?;
            let pw = read_password(&password_env)?;
            let u = match store.create(&username, &display_name, role, &pw) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            record(
                &data_dir,
                UserChange {
                    username: u.username.clone(),
                    op: "create".into(),
                    role: Some(role.name().into()),
                    display_name: Some(u.display_name.clone()),
                    actor: "cli".into(),
                },
            )?;
            println!("added {} ({}, {})", u.username, u.display_name, role.name());
        }
        UserCommand::List { data_dir } => {
            for u in UserStore::open(&data_dir)?.list()? {
                println!("{}\t{}\t{}", u.username, u.role.name(), u.display_name);
            }
        }
        UserCommand::Passwd {
            data_dir,
            username,
            password_env,
        } => {
            let store = UserStore::open(&data_dir)?;
            let pw = read_password(&password_env)?;
            if let Err(e) = store.set_password(&username, &pw) {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            record(
                &data_dir,
                UserChange {
                    username: username.clone(),
                    op: "password".into(),
                    role: None,
                    display_name: None,
                    actor: "cli".into(),
                },
            )?;
            println!("password of {username} changed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
