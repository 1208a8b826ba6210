//! Where the CA's own material lives.
//!
//! - A generated root is persisted through [`CaStore`]: a directory in local
//!   mode ([`DirStore`]); a Kubernetes Secret in cluster mode (implemented
//!   with the Kubernetes source, outside this crate).
//! - A plug-in CA is read from files ([`PlugInFiles`]), laid out like
//!   Istio's `cacerts`, so operators can reuse what they have.

use std::path::{Path, PathBuf};

use crate::{Error, PrivateKey, Result};

/// A root certificate and its key, as persisted.
#[derive(Clone, Debug)]
pub struct StoredRoot {
    pub cert_pem: String,
    pub key: PrivateKey,
    /// Roots that are still trusted while a rotation away from them is
    /// under way (certificates only).
    pub previous_certs_pem: Vec<String>,
    /// A new root that is trusted but does not sign yet (the first step of
    /// a rotation), so every replica's proxies trust it before any
    /// certificate from it exists.
    pub staged: Option<StagedRoot>,
}

/// A staged root: its certificate and key.
#[derive(Clone, Debug)]
pub struct StagedRoot {
    pub cert_pem: String,
    pub key: PrivateKey,
}

/// Roots a rotation retired that meshd's own servers still accept client
/// certificates from, and the certificates that chain the current root to
/// them (see `Authority::retire_previous_roots`). Certificates only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetiredRoots {
    pub roots: Vec<RetiredRoot>,
    pub cross_signed_pem: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetiredRoot {
    pub cert_pem: String,
    /// Client certificates from it are accepted until then (Unix seconds).
    pub accepted_until_unix: i64,
}

pub trait CaStore: Send + Sync {
    fn load(&self) -> Result<Option<StoredRoot>>;
    fn save(&self, root: &StoredRoot) -> Result<()>;

    /// Keeps `retired` across restarts. A store that does not (the default)
    /// loses it: after a restart, a client holding a certificate from a
    /// retired root needs a fresh one.
    fn save_retired(&self, retired: &RetiredRoots) -> Result<()> {
        let _ = retired;
        Ok(())
    }

    fn load_retired(&self) -> Result<Option<RetiredRoots>> {
        Ok(None)
    }
}

/// The header before each retired root in `retired-roots.pem`.
const ACCEPTED_UNTIL: &str = "# accepted until (unix seconds): ";

/// A directory holding `root-cert.pem`, `root-key.pem` (mode 0600) and,
/// during a rotation, `previous-root-cert.pem` or `staged-root-cert.pem`
/// and `staged-root-key.pem` (mode 0600).
#[derive(Clone, Debug)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    // Write then rename: a crash never leaves half a key behind.
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

impl CaStore for DirStore {
    fn load(&self) -> Result<Option<StoredRoot>> {
        let cert = self.path("root-cert.pem");
        if !cert.exists() {
            return Ok(None);
        }
        let previous = self.path("previous-root-cert.pem");
        let staged = self.path("staged-root-cert.pem");
        Ok(Some(StoredRoot {
            cert_pem: read(&cert)?,
            key: PrivateKey::from_pem(read(&self.path("root-key.pem"))?),
            previous_certs_pem: if previous.exists() {
                vec![read(&previous)?]
            } else {
                vec![]
            },
            staged: if staged.exists() {
                Some(StagedRoot {
                    cert_pem: read(&staged)?,
                    key: PrivateKey::from_pem(read(&self.path("staged-root-key.pem"))?),
                })
            } else {
                None
            },
        }))
    }

    fn save(&self, root: &StoredRoot) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })?;
        write(&self.path("root-key.pem"), root.key.expose_pem(), 0o600)?;
        write(&self.path("root-cert.pem"), &root.cert_pem, 0o644)?;
        match &root.staged {
            Some(staged) => {
                write(
                    &self.path("staged-root-key.pem"),
                    staged.key.expose_pem(),
                    0o600,
                )?;
                write(&self.path("staged-root-cert.pem"), &staged.cert_pem, 0o644)?;
            }
            None => {
                remove_if_present(&self.path("staged-root-cert.pem"))?;
                remove_if_present(&self.path("staged-root-key.pem"))?;
            }
        }
        let previous = self.path("previous-root-cert.pem");
        match root.previous_certs_pem.first() {
            Some(pem) => write(&previous, pem, 0o644)?,
            None if previous.exists() => {
                std::fs::remove_file(&previous).map_err(|source| Error::Io {
                    path: previous,
                    source,
                })?
            }
            None => {}
        }
        Ok(())
    }

    /// `retired-roots.pem`: each retired root after a comment line with
    /// its time; `cross-signed-roots.pem`: the cross-signed certificates.
    /// Both removed when empty.
    fn save_retired(&self, retired: &RetiredRoots) -> Result<()> {
        let roots = self.path("retired-roots.pem");
        let cross = self.path("cross-signed-roots.pem");
        if retired.roots.is_empty() {
            remove_if_present(&roots)?;
        } else {
            let text: String = retired
                .roots
                .iter()
                .map(|r| {
                    format!(
                        "{ACCEPTED_UNTIL}{}\n{}",
                        r.accepted_until_unix,
                        r.cert_pem.trim_end().to_string() + "\n"
                    )
                })
                .collect();
            write(&roots, &text, 0o644)?;
        }
        if retired.cross_signed_pem.is_empty() {
            remove_if_present(&cross)?;
        } else {
            write(&cross, &retired.cross_signed_pem.concat(), 0o644)?;
        }
        Ok(())
    }

    fn load_retired(&self) -> Result<Option<RetiredRoots>> {
        let roots = self.path("retired-roots.pem");
        let cross = self.path("cross-signed-roots.pem");
        if !roots.exists() && !cross.exists() {
            return Ok(None);
        }
        let mut retired = RetiredRoots::default();
        if roots.exists() {
            let text = read(&roots)?;
            let mut current: Option<RetiredRoot> = None;
            for line in text.lines() {
                if let Some(until) = line.strip_prefix(ACCEPTED_UNTIL) {
                    retired.roots.extend(current.take());
                    let accepted_until_unix = until.trim().parse().map_err(|_| Error::File {
                        path: roots.clone(),
                        problem: format!(
                            "`{line}`: expected `{ACCEPTED_UNTIL}<integer>` before each certificate"
                        ),
                    })?;
                    current = Some(RetiredRoot {
                        cert_pem: String::new(),
                        accepted_until_unix,
                    });
                } else if let Some(root) = current.as_mut() {
                    root.cert_pem.push_str(line);
                    root.cert_pem.push('\n');
                }
            }
            retired.roots.extend(current);
        }
        if cross.exists() {
            retired.cross_signed_pem.push(read(&cross)?);
        }
        Ok(Some(retired))
    }
}

/// A plug-in CA: an intermediate the mesh issues from, chained to the
/// operator's root.
#[derive(Clone, Debug)]
pub struct PlugInFiles {
    /// The intermediate certificate meshd signs with.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The root that anchors the mesh's trust.
    pub root: PathBuf,
    /// The intermediate's chain up to the root (may include the root).
    pub chain: PathBuf,
}

impl PlugInFiles {
    /// The Istio `cacerts` layout in one directory.
    pub fn in_dir(dir: &Path) -> Self {
        PlugInFiles {
            cert: dir.join("ca-cert.pem"),
            key: dir.join("ca-key.pem"),
            root: dir.join("root-cert.pem"),
            chain: dir.join("cert-chain.pem"),
        }
    }
}
