//! The `faas` command line: `faas serve` runs the platform; the other subcommands are the user's
//! client of its admin API (`new`, `deploy`, `ls`, `get`, `rm`, `scale`, `logs`, `invoke`).

mod client;
mod commands;
mod deploy;
mod output;
mod templates;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use self::client::Client;
use self::output::Out;

/// The gateway the client talks to when neither `--gateway` nor `FAAS_GATEWAY` says.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// `faas`.
#[derive(Parser)]
#[command(
    name = "faas",
    version,
    about = "Poorman FaaS: Python functions behind a Pingora gateway",
    after_help = "Start the platform with `faas serve`; then `faas new hello`, \
                  `faas deploy hello.py`, `faas invoke hello /`."
)]
pub struct Cli {
    /// Options of every client subcommand.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every client subcommand, accepted before or after it.
#[derive(Args, Clone)]
pub struct Global {
    /// The gateway to talk to.
    #[arg(long, global = true, env = "FAAS_GATEWAY", default_value = DEFAULT_GATEWAY)]
    pub gateway: String,
    /// Print JSON, and only JSON, on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway, admin API and runtime.
    Serve {
        /// Configuration file (Pingora keys + a `faas:` section); the environment overrides it.
        #[arg(long, env = "FAAS_CONF")]
        conf: Option<PathBuf>,
    },
    /// Write a ready-to-deploy function NAME.py in the current directory.
    New {
        /// The function's name (lowercase letters, digits and `-`).
        name: String,
        /// What it is written with.
        #[arg(long, value_enum, default_value_t = Template::Stdlib)]
        template: Template,
        /// Overwrite NAME.py if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Deploy a PEP 723 script as a function, or update the function of that name.
    Deploy(deploy::DeployArgs),
    /// List the functions.
    #[command(alias = "list")]
    Ls,
    /// Show one function.
    Get {
        /// The function.
        name: String,
    },
    /// Remove a function.
    #[command(alias = "delete")]
    Rm {
        /// The function.
        name: String,
        /// Do not ask (nothing asks when stdin is not a terminal).
        #[arg(short, long)]
        yes: bool,
    },
    /// Set a function's replicas.
    Scale {
        /// The function.
        name: String,
        /// Replicas wanted, within its min and max.
        replicas: u32,
    },
    /// Print a function's recent output.
    Logs {
        /// The function.
        name: String,
        /// How many recent lines.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Go on printing new lines as they come (until Ctrl-C or the function is removed).
        #[arg(short, long)]
        follow: bool,
    },
    /// Call a function through the gateway and print its answer.
    Invoke(commands::InvokeArgs),
    /// Print a shell completion script (`faas completions bash > ~/.local/share/bash-completion/completions/faas`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The templates of `faas new`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Template {
    /// Python's standard library only: no packages to install.
    Stdlib,
    /// FastAPI served by uvicorn.
    Fastapi,
}

/// What went wrong in a client subcommand: printed as one line, exit status 1.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// Runs a client subcommand; the process's exit status.
pub fn run(global: Global, command: Command) -> i32 {
    let out = Out::new(global.json);
    let result = match command {
        Command::Serve { .. } => unreachable_serve(),
        Command::New {
            name,
            template,
            force,
        } => templates::write(&out, &name, template, force),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "faas", &mut std::io::stdout());
            Ok(())
        }
        command => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return out.fail(&Failure(format!("starting the client: {e}"))),
            };
            runtime.block_on(async {
                let client = Client::new(&global.gateway)?;
                match command {
                    Command::Deploy(args) => deploy::run(&client, &out, args).await,
                    Command::Ls => commands::ls(&client, &out).await,
                    Command::Get { name } => commands::get(&client, &out, &name).await,
                    Command::Rm { name, yes } => commands::rm(&client, &out, &name, yes).await,
                    Command::Scale { name, replicas } => {
                        commands::scale(&client, &out, &name, replicas).await
                    }
                    Command::Logs { name, tail, follow } => {
                        commands::logs(&client, &out, &name, tail, follow).await
                    }
                    Command::Invoke(args) => commands::invoke(&client, &out, args).await,
                    _ => unreachable_serve(),
                }
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(f) => out.fail(&f),
    }
}

fn unreachable_serve() -> Result<(), Failure> {
    Err(Failure("`serve` is not a client subcommand".into()))
}
