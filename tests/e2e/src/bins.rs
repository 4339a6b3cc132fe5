//! Locating the built binaries (`vpcsim`, `ipamd`, `aws-cni`).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Overrides the directory the binaries are taken from.
pub const BIN_DIR_ENV: &str = "AWSCNI_E2E_BIN_DIR";

/// Paths of the binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// Directory holding them (also `CNI_PATH`).
    pub dir: PathBuf,
    /// `vpcsim`.
    pub vpcsim: PathBuf,
    /// `ipamd`.
    pub ipamd: PathBuf,
    /// `aws-cni`.
    pub aws_cni: PathBuf,
}

impl Bins {
    /// Finds the binaries next to the running executable: a test runs from
    /// `target/<profile>/deps/`, a bench binary from `target/<profile>/`; `cargo build
    /// --workspace --bins` puts the binaries in `target/<profile>/`. [`BIN_DIR_ENV`] overrides.
    pub fn locate() -> anyhow::Result<Self> {
        Ok(Self {
            vpcsim: find("vpcsim")?,
            ipamd: find("ipamd")?,
            aws_cni: find("aws-cni")?,
            dir: bin_dir()?,
        })
    }
}

/// The directory holding the binaries (see [`Bins::locate`]).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// One binary in [`bin_dir`], or a clear error saying how to build it.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir()?;
    let p = dir.join(name);
    anyhow::ensure!(
        p.is_file(),
        "binary {name} not found at {} — build the binaries first with \
         `cargo build --workspace --bins` (scripts/test.sh does), or point {BIN_DIR_ENV} \
         at the directory holding them",
        p.display()
    );
    Ok(p)
}
