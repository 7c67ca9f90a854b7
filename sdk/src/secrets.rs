//! Secret handles. A plugin never holds a secret's value: it opens a handle and writes the
//! handle's placeholder where the value belongs in an outgoing request header. The host puts the
//! value in as the request leaves, and only for hosts the secret is granted for.

use crate::Error;

/// A handle to one granted secret.
pub struct Secret {
    name: String,
    placeholder: String,
    #[cfg(target_arch = "wasm32")]
    _handle: crate::bindings::engine::plugin::secrets::Secret,
}

impl Secret {
    /// Opens the secret the pipeline grants under `name`.
    pub fn open(name: &str) -> Result<Secret, Error> {
        #[cfg(target_arch = "wasm32")]
        {
            let handle = crate::bindings::engine::plugin::secrets::open(name)?;
            Ok(Secret {
                name: handle.name(),
                placeholder: handle.placeholder(),
                _handle: handle,
            })
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let placeholder = crate::testing::open_secret(name)?;
            Ok(Secret {
                name: name.to_string(),
                placeholder,
            })
        }
    }

    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token to write into a header value in place of the secret.
    pub fn placeholder(&self) -> &str {
        &self.placeholder
    }

    /// `Bearer <placeholder>`, for an `Authorization` header.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.placeholder)
    }

    /// The value of the `x-engine-aws-sigv4` header that asks the host to sign a request with
    /// this secret's AWS credentials (Signature Version 4) for `service` (its signing name:
    /// `ecs`, `elasticloadbalancing`, `monitoring`…) in `region`. The host removes the header
    /// and adds the signature as the request leaves; see `RequestBuilder::aws_sigv4`.
    pub fn aws_sigv4(&self, service: &str, region: &str) -> String {
        format!("{}; service={service}; region={region}", self.placeholder)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("name", &self.name).finish()
    }
}
