//! `cargo xtask logs [SERVICE]`: follows the log file of one service of the local cluster, or
//! of all of them (`tail -F`, so it keeps following across restarts).

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::cluster::Layout;

pub struct Logs {
    pub service: Option<String>,
}

impl Logs {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let layout = Layout::new(sh);
        let files: Vec<std::path::PathBuf> = match &self.service {
            Some(name) => {
                let path = layout.log(name);
                if !path.exists() {
                    let known = known_logs(&layout);
                    bail!(
                        "no log for `{name}` at {}; known: {}",
                        path.display(),
                        known.join(" ")
                    );
                }
                vec![path]
            }
            None => {
                let mut files: Vec<_> = std::fs::read_dir(layout.logs())
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|x| x == "log"))
                            .collect()
                    })
                    .unwrap_or_default();
                files.sort();
                if files.is_empty() {
                    bail!(
                        "no logs in {} (run `cargo xtask up --detach` first)",
                        layout.logs().display()
                    );
                }
                files
            }
        };
        cmd!(sh, "tail -n 50 -F {files...}").run()?;
        Ok(())
    }
}

fn known_logs(layout: &Layout) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.logs())
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.path()
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
