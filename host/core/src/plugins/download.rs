//! Plugins fetched over the network (`https://` URLs; registry blobs in `registry.rs`), kept on
//! disk by the sha256 of their bytes. An entry is only ever written after its hash was checked,
//! and checked again when read, so a damaged entry is fetched anew rather than loaded.

use super::SourceError;
use crate::runtime::cache::sha256_hex;
use std::path::PathBuf;

/// The largest plugin the engine fetches: components with an interpreter inside are ~20 MB.
pub const MAX_PLUGIN_BYTES: usize = 256 << 20;

/// Where fetched plugins are kept, by sha256. None: nowhere (each load fetches).
#[derive(Debug, Clone, Default)]
pub struct DownloadCache {
    dir: Option<PathBuf>,
}

impl DownloadCache {
    pub fn new(dir: Option<PathBuf>) -> DownloadCache {
        DownloadCache { dir }
    }

    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }

    fn entry(&self, sha256: &str) -> Option<PathBuf> {
        let hex = sha256.strip_prefix("sha256:").unwrap_or(sha256);
        if !super::is_sha256_hex(hex) {
            return None;
        }
        Some(
            self.dir
                .as_ref()?
                .join(format!("{}.wasm", hex.to_ascii_lowercase())),
        )
    }

    /// The bytes kept under `sha256`, if they are there and still hash to it.
    pub fn get(&self, sha256: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.entry(sha256)?).ok()?;
        let hex = sha256.strip_prefix("sha256:").unwrap_or(sha256);
        (sha256_hex(&bytes) == hex.to_ascii_lowercase()).then_some(bytes)
    }

    /// Keeps `bytes`, whose sha256 the caller checked; a failure only costs a later fetch.
    pub fn put(&self, bytes: &[u8]) {
        let Some(path) = self.entry(&sha256_hex(bytes)) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let dir = path.parent().expect("an entry has a directory");
            std::fs::create_dir_all(dir)?;
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut file, bytes)?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!("cannot keep a fetched plugin in {}: {e}", path.display());
        }
    }
}

/// The component at `url`: from the cache when pinned and kept, else downloaded and, when
/// pinned, checked before it is kept.
pub(super) async fn fetch_url(
    plugin: &str,
    url: &str,
    sha256: Option<&str>,
    cache: &DownloadCache,
) -> Result<Vec<u8>, SourceError> {
    if let Some(bytes) = sha256.and_then(|pin| cache.get(pin)) {
        return Ok(bytes);
    }
    let failed = |message: String| SourceError::Fetch {
        plugin: plugin.to_string(),
        source_text: url.to_string(),
        message,
    };
    // The pipeline's check allows plain http:// only to this machine; a redirect may not leave
    // HTTPS for somewhere else either (unpinned, what it serves is what `plugins lock` pins).
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let url = attempt.url();
        let this_machine = url.host_str().is_some_and(super::is_this_machine);
        if attempt.previous().len() >= 10 {
            attempt.error("more than 10 redirects")
        } else if url.scheme() == "https" || this_machine {
            attempt.follow()
        } else {
            let message = format!("a redirect to {url} leaves HTTPS");
            attempt.error(message)
        }
    });
    let client = reqwest::Client::builder()
        .redirect(redirects)
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!("the server answered {}", response.status())));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| failed(error_chain(&e)))?
    {
        if bytes.len() + chunk.len() > MAX_PLUGIN_BYTES {
            return Err(failed(format!(
                "it is larger than the {} MiB a plugin may be",
                MAX_PLUGIN_BYTES >> 20
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    if sha256.is_some_and(|pin| pin.eq_ignore_ascii_case(&sha256_hex(&bytes))) {
        cache.put(&bytes);
    }
    Ok(bytes)
}

/// An error with its causes, as one line (reqwest's own message omits why a connection failed).
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_that_no_longer_hashes_to_its_name_is_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DownloadCache::new(Some(dir.path().to_path_buf()));
        let bytes = b"\0asm component".to_vec();
        let sha = sha256_hex(&bytes);
        cache.put(&bytes);
        assert_eq!(cache.get(&sha), Some(bytes.clone()));
        assert_eq!(cache.get(&format!("sha256:{sha}")), Some(bytes));
        std::fs::write(dir.path().join(format!("{sha}.wasm")), b"tampered").unwrap();
        assert_eq!(cache.get(&sha), None);
        assert_eq!(cache.get("../../etc/passwd"), None);
    }
}
