//! `portlab completions SHELL` (clap_complete) and `portlab man` (clap_mangen): generated
//! from the same clap command tree as the parser, so they cannot drift from the flags.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;

/// Flags of `portlab completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
portlab completions bash > /etc/bash_completion.d/portlab\n  \
portlab completions zsh > \"${fpath[1]}/_portlab\"\n  \
portlab completions fish > ~/.config/fish/completions/portlab.fish")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `portlab man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  portlab man | man -l -\n  \
portlab man > /usr/local/share/man/man1/portlab.1")]
pub struct ManArgs {}

/// Writes the completion script for `args.shell` to stdout.
///
/// # Errors
/// A write error other than a closed pipe.
pub fn completions(args: &CompletionsArgs, mut command: clap::Command) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "portlab", &mut out);
    emit(&out)
}

/// Writes the roff man page `portlab(1)` to stdout: the command, then a section per
/// subcommand with its flags (hidden ones left out).
///
/// # Errors
/// A write error other than a closed pipe.
pub fn man(_args: &ManArgs, command: clap::Command) -> anyhow::Result<ExitCode> {
    let command = command.version(env!("CARGO_PKG_VERSION"));
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut out)
        .context("rendering the man page")?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let _ = writeln!(out, ".SH \"PORTLAB {}\"", sub.get_name().to_uppercase());
        let page = clap_mangen::Man::new(sub.clone());
        page.render_description_section(&mut out)
            .context("rendering the man page")?;
        page.render_options_section(&mut out)
            .context("rendering the man page")?;
        if sub.get_after_help().is_some() || sub.get_after_long_help().is_some() {
            page.render_extra_section(&mut out)
                .context("rendering the man page")?;
        }
    }
    emit(&out)
}

fn emit(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    crate::exit::emit(&String::from_utf8_lossy(bytes))?;
    Ok(ExitCode::SUCCESS)
}
