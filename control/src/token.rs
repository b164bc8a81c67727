//! The admin token. The admin API runs arbitrary Python for whoever may call it, so it is never
//! open by accident: without `FAAS_ADMIN_TOKEN`, `faas serve` generates a token on first start
//! and keeps it in the state directory (mode 0600), where the user — and only the user — can
//! read it. `FAAS_ADMIN_OPEN=true` (with no token) opens it, with a warning at every start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::{Error, Result};

/// File name of the generated token inside the state directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Where the admin token came from, to tell the user once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `FAAS_ADMIN_TOKEN`.
    Configured,
    /// Read from, or just written to, this file.
    File(PathBuf),
    /// `FAAS_ADMIN_OPEN=true`: no token.
    Open,
}

/// The path of the generated token for a state directory.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

/// Makes sure `cfg.admin_token` is set unless the operator opened the admin API: reads the
/// token file of the state directory, or creates it with a fresh random token.
pub fn ensure(cfg: &mut Config) -> Result<TokenSource> {
    if cfg.admin_token.is_some() {
        return Ok(TokenSource::Configured);
    }
    if cfg.admin_open {
        return Ok(TokenSource::Open);
    }
    let path = token_path(&cfg.state_dir);
    cfg.admin_token = Some(load_or_create(&path)?);
    Ok(TokenSource::File(path))
}

fn load_or_create(path: &Path) -> Result<String> {
    let io =
        |what: &str, e: std::io::Error| Error::internal(format!("{what} {}", path.display()), e);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
    }
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            // Someone widened it: narrow it again rather than serve a readable secret.
            let meta = fs::metadata(path).map_err(|e| io("reading", e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| io("restricting", e))?;
                log::warn!(
                    "{} was readable by others; it is 0600 again",
                    path.display()
                );
            }
            return Ok(text.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    let token = generate();
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io("writing", e))?;
    fs::rename(&tmp, path).map_err(|e| io("writing", e))?;
    Ok(token)
}

/// 32 random bytes as hex (two v4 UUIDs: 244 bits from the OS's generator).
fn generate() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, pairs: &[(&str, &str)]) -> Config {
        let mut all: Vec<(String, String)> = vec![
            ("FAAS_RUNTIME".into(), "local".into()),
            ("FAAS_STATE_DIR".into(), dir.to_string_lossy().into_owned()),
        ];
        all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_sources(None, |k| {
            all.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    #[test]
    fn generated_once_kept_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path(), &[]);
        let src = ensure(&mut c).unwrap();
        assert_eq!(src, TokenSource::File(token_path(tmp.path())));
        let token = c.admin_token.clone().unwrap();
        assert_eq!(token.len(), 64);
        let mode = fs::metadata(token_path(tmp.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut again = cfg(tmp.path(), &[]);
        ensure(&mut again).unwrap();
        assert_eq!(
            again.admin_token.unwrap(),
            token,
            "same token after a restart"
        );
    }

    #[test]
    fn configured_or_open_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path(), &[("FAAS_ADMIN_TOKEN", "t")]);
        assert_eq!(ensure(&mut c).unwrap(), TokenSource::Configured);
        let mut o = cfg(tmp.path(), &[("FAAS_ADMIN_OPEN", "true")]);
        assert_eq!(ensure(&mut o).unwrap(), TokenSource::Open);
        assert!(o.admin_token.is_none());
        assert!(!token_path(tmp.path()).exists());
    }
}
