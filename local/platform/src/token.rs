//! The admin API's access token.
//!
//! Each running platform has a random token of its own, written where only this user can read
//! it (a file named after the admin port, mode 0600, in a directory of mode 0700). Every admin
//! call that can change or reveal anything carries it as `Authorization: Bearer <token>`. The
//! engine reads it and hands it to its own `local` provider as a host-brokered secret, so the
//! plugin never holds the value and no other plugin can get it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

/// Where the tokens are kept: `$ENGINE_LOCAL_TOKEN_DIR`, else `$XDG_RUNTIME_DIR/engine`, else
/// `~/.local/state/engine`.
pub fn directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("ENGINE_LOCAL_TOKEN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(dir).join("engine");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".local").join("state").join("engine")
}

/// The token file of the platform whose admin API listens on `port`.
pub fn path(port: u16) -> PathBuf {
    directory().join(format!("local-platform-{port}.token"))
}

/// Makes a new token for the platform on `port` and writes it, replacing a stale one.
pub fn create(port: u16) -> std::io::Result<String> {
    let dir = directory();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let meta = std::fs::metadata(&dir)?;
    // Somebody else's directory, or one others may write to, could hand the token out.
    if meta.uid() != effective_uid() || meta.permissions().mode() & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "{} must belong to this user and not be writable by others (set ENGINE_LOCAL_TOKEN_DIR to another directory)",
            dir.display()
        )));
    }
    let token = hex(&rand::random::<[u8; 32]>());
    let file = path(port);
    let _ = std::fs::remove_file(&file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)?;
    out.write_all(token.as_bytes())?;
    Ok(token)
}

/// The token of the platform on `port`, for the engine's own calls.
pub fn read(port: u16) -> std::io::Result<String> {
    let file = path(port);
    std::fs::read_to_string(&file)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot read the local platform's access token {}: {e} (was the platform on port {port} started by another user or with another ENGINE_LOCAL_TOKEN_DIR?)",
                    file.display()
                ),
            )
        })
}

/// Removes the token file if it still holds `token` (a newer platform may have replaced it).
pub fn remove(port: u16, token: &str) {
    if read(port).is_ok_and(|t| t == token) {
        let _ = std::fs::remove_file(path(port));
    }
}

/// Whether `header` (an Authorization value) carries `token`, compared in constant time.
pub fn authorizes(header: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    !token.is_empty()
        && given.len() == token.len()
        && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn effective_uid() -> u32 {
    nix::unistd::Uid::effective().as_raw()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_authorizes() {
        assert!(authorizes(Some("Bearer abc123"), "abc123"));
        assert!(!authorizes(Some("Bearer abc12"), "abc123"));
        assert!(!authorizes(Some("abc123"), "abc123"));
        assert!(!authorizes(None, "abc123"));
        assert!(!authorizes(Some("Bearer "), ""));
    }
}
