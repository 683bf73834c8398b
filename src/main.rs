//! The `kube-free` binary: parses arguments, sets up logging, runs one command, prints an error once
//! (with its causes) and exits with the code of design §3.

use clap::Parser;
use kube_free::cli::{Cli, Command};
use kube_free::commands::{self, Gate};
use kube_free::{Error, Exit};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    kube_free::source::set_network_timeouts();
    // A service logs what it does; a one-shot command only what goes wrong; a quiet one nothing
    // (its result, or its error, says what happened).
    let default = match &cli.command {
        Command::Watch(_) => "info",
        Command::Reconcile(args) if args.quiet => "off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBE_FREE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stderr, above reconcile's live view of its steps while one is drawn.
        .with_writer(kube_free::progress::LogWriter)
        // Colours only on a terminal: a log file or a CI job gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr must not end a run half way (tracing would report it with eprintln!,
        // which panics).
        .log_internal_errors(false)
        .init();

    // Not locked: log lines from worker threads go to stderr too.
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let result = match &cli.command {
        Command::Validate(args) => commands::validate(args, &mut out, &mut err),
        Command::Schema(args) => commands::schema(args, &mut out),
        Command::Completions(args) => commands::completions(args, &mut out),
        Command::NginxSnippet(args) => commands::nginx_snippet(args, &mut out),
        Command::Plan(args) => block_on(commands::plan(args, &mut out, &mut err)),
        Command::Reconcile(args) => block_on(commands::reconcile(args, &mut out, &mut err)),
        Command::Status(args) => block_on(commands::status(args, &mut out)),
        Command::Logs(args) => block_on(commands::logs(args, &mut out, &mut err)),
        Command::History(args) => block_on(commands::history(args, &mut out, &mut err)),
        Command::Watch(args) => block_on(commands::watch(args)),
        Command::Promote(args) => block_on(commands::gate(Gate::Promote, args, &mut out)),
        Command::Abort(args) => block_on(commands::gate(Gate::Abort, args, &mut out)),
        Command::Retry(args) => block_on(commands::gate(Gate::Retry, args, &mut out)),
        Command::Suspend(args) => block_on(commands::suspend(args, &mut out)),
        Command::Resume(args) => block_on(commands::resume(args, &mut out)),
    };
    let _ = out.flush();
    let code = match result {
        Ok(exit) => exit,
        // A closed stdout (`kube-free schema | head`) is not worth a message.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Ok,
        Err(e) => {
            report(&e, &mut err);
            e.exit()
        }
    };
    ExitCode::from(code as u8)
}

fn block_on<F: std::future::Future<Output = Result<Exit, Error>>>(work: F) -> Result<Exit, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?
        .block_on(work)
}

/// Prints an error once: located problems first, then the error and its chain of causes.
fn report(e: &Error, err: &mut dyn Write) {
    if let Error::Invalid { diagnostics, .. } = e {
        for d in diagnostics {
            let _ = writeln!(err, "{d}");
        }
    }
    let _ = writeln!(err, "error: {}", kube_free::error::chain(e));
}
