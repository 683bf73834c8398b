//! What each CLI command does, on top of the library: read the desired state, act, print the result.
//! Output goes to the writers given, so tests can read it; errors are returned, never printed here.

use crate::cli::{Output, SchemaArgs, SourceArgs, ValidateArgs};
use crate::desired::{self, LoadError};
use crate::error::{Error, Exit};
use crate::source::{self, Snapshot, SourceSpec};
use std::io::Write;

/// Opens the source named on the command line at the commit it names.
fn open(args: &SourceArgs) -> Result<Snapshot, Error> {
    let snapshot = source::open(&SourceSpec {
        repo: args.repo.clone(),
        rev: args.rev.clone(),
        cache_dir: args.cache_dir.clone(),
    })?;
    tracing::info!(repo = %snapshot.origin, commit = %snapshot.commit, "reading desired state");
    Ok(snapshot)
}

/// The error for a desired state that could not be loaded from `snapshot`.
fn load_error(snapshot: &Snapshot, e: LoadError) -> Error {
    let origin = snapshot.origin.clone();
    let commit = snapshot.commit.to_string();
    match e {
        LoadError::Invalid(diagnostics) => Error::Invalid {
            origin,
            commit,
            diagnostics,
        },
        LoadError::NoRootFile => Error::NoRootFile { origin, commit },
        e @ LoadError::Files(_) => Error::Read {
            origin,
            commit,
            source: e,
        },
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

pub fn validate(
    args: &ValidateArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Error> {
    let snapshot = open(&args.source)?;
    let commit = snapshot.commit.to_string();
    if !snapshot.uncommitted.is_empty() && args.output == Output::Text {
        writeln!(
            err,
            "warning: {} in {} ignored; validating commit {} (commit them to validate them):",
            plural(snapshot.uncommitted.len(), "uncommitted change"),
            snapshot.origin,
            snapshot.short_commit()
        )?;
        for line in &snapshot.uncommitted {
            writeln!(err, "  {line}")?;
        }
    }
    let (state, diagnostics) = match desired::load(&snapshot) {
        Ok(state) => (Some(state), Vec::new()),
        Err(LoadError::Invalid(d)) => (None, d),
        Err(e) => return Err(load_error(&snapshot, e)),
    };
    match args.output {
        Output::Json => {
            let report = serde_json::json!({
                "valid": diagnostics.is_empty(),
                "repo": snapshot.origin,
                "commit": commit,
                "uncommitted": snapshot.uncommitted,
                "errors": diagnostics,
            });
            serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        Output::Text => match &state {
            Some(state) => writeln!(
                out,
                "valid: {} at commit {} ({}, {}, {}, {})",
                snapshot.origin,
                commit,
                plural(state.environments.len(), "environment"),
                plural(state.apps.len(), "app"),
                plural(state.hosts.len(), "host"),
                plural(state.balancers.len(), "balancer"),
            )?,
            None => return Err(load_error(&snapshot, LoadError::Invalid(diagnostics))),
        },
    }
    Ok(if diagnostics.is_empty() {
        Exit::Ok
    } else {
        Exit::BadInput
    })
}

pub fn schema(args: &SchemaArgs, out: &mut dyn Write) -> Result<Exit, Error> {
    let schema = if args.environment {
        desired::environment_schema()
    } else {
        desired::root_schema()
    };
    serde_json::to_writer_pretty(&mut *out, &schema).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(Exit::Ok)
}
