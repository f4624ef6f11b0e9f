//! Exit codes and the one-line error messages printed at the top level.

use std::fmt;
use std::process::ExitCode;

/// Exit code for a usage error (bad flag or value), as clap and most Unix tools use.
pub const USAGE: u8 = 2;
/// Exit code for a run that could not be carried out (I/O, kernel interface denied, …).
pub const FAILURE: u8 = 1;

/// A usage error found after clap parsed the flags (a value clap cannot check, such as an
/// address that must parse as `ADDR:PORT`). `main` maps it to exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Builds an `anyhow::Error` that `main` reports with exit code 2.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Prints a clap error as one line (help and version are printed in full) and returns its
/// exit code: 0 for `--help`/`--version`, 2 for anything else.
pub fn clap_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // clap renders help itself; a failed write to a closed pipe is not an error here.
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = err.render().to_string();
            let first = rendered
                .lines()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("portlab: {first} (see --help)");
            ExitCode::from(USAGE)
        }
    }
}

/// Prints an error chain on one line and returns 2 for usage errors, 1 otherwise.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("portlab: {err:#}");
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(USAGE)
    } else {
        ExitCode::from(FAILURE)
    }
}

/// Writes a report to stdout. A closed pipe (`portlab … | head`) is not an error: the reader
/// has what it wanted, so the output stops quietly instead of panicking as `print!` would.
///
/// # Errors
/// Any other write error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(err).context("writing to stdout"))
        }
        _ => Ok(()),
    }
}
