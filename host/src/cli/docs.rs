//! `engine completions SHELL` and `engine man`: the command line described for shells and
//! `man`, generated from the same definitions clap parses with, so they never drift.

use super::{Cli, CommandError};
use clap::CommandFactory;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write engine.1 and a page per command (engine-run.1, …) into this directory instead of
    /// printing engine.1
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: &CompletionsArgs) -> Result<(), CommandError> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "engine", &mut std::io::stdout());
    Ok(())
}

pub fn man(args: &ManArgs) -> Result<(), CommandError> {
    let command = Cli::command();
    match &args.dir {
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .map_err(|e| CommandError::failure(format!("cannot write the man page: {e}"))),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                CommandError::failure(format!("cannot create {}: {e}", dir.display()))
            })?;
            clap_mangen::generate_to(command, dir).map_err(|e| {
                CommandError::failure(format!(
                    "cannot write man pages into {}: {e}",
                    dir.display()
                ))
            })?;
            println!("wrote the man pages into {}", dir.display());
            Ok(())
        }
    }
}
