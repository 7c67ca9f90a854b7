//! Requests made with `wasi:http` directly, below the SDK: what an attacker's plugin can do
//! that the SDK would never do (stream an endless body, hold many responses unread).

#[cfg(target_arch = "wasm32")]
mod imp {
    use wasip2::http::outgoing_handler::{self, FutureIncomingResponse};
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    fn request(method: Method, url: &str) -> Result<(OutgoingRequest, OutgoingBody), String> {
        let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        request.set_method(&method).map_err(|()| "method")?;
        let scheme = if scheme == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
        request
            .set_authority(Some(authority))
            .map_err(|()| "authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| "path")?;
        let body = request.body().map_err(|()| "body")?;
        Ok((request, body))
    }

    fn response(pending: &FutureIncomingResponse) -> Result<u16, String> {
        pending.subscribe().block();
        match pending.get() {
            Some(Ok(Ok(r))) => Ok(r.status()),
            Some(Ok(Err(e))) => Err(format!("{e:?}")),
            _ => Err("no response".into()),
        }
    }

    /// POSTs `mib` MiB, written 4 KiB at a time (the most one blocking write takes) from one
    /// reused buffer.
    pub fn upload(url: &str, mib: u64) -> Result<String, String> {
        let (request, body) = request(Method::Post, url)?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
        let chunk = vec![b'x'; 4096];
        {
            let stream = body.write().map_err(|()| "stream")?;
            for _ in 0..mib * 256 {
                stream
                    .blocking_write_and_flush(&chunk)
                    .map_err(|e| format!("writing: {e:?}"))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
        response(&pending).map(|status| format!("{status}"))
    }

    /// Sends `count` GETs at once and keeps every response unread; reports each outcome.
    pub fn fan_out(url: &str, count: u32) -> Result<String, String> {
        let mut pending = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..count {
            let (request, body) = request(Method::Get, url)?;
            OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
            match outgoing_handler::handle(request, None) {
                Ok(p) => pending.push(p),
                Err(e) => refused.push(format!("{e:?}")),
            }
        }
        let (mut ok, mut failed) = (0, Vec::new());
        let mut held = Vec::new();
        for p in &pending {
            p.subscribe().block();
            match p.get() {
                Some(Ok(Ok(r))) => {
                    ok += 1;
                    held.push(r); // never read
                }
                Some(Ok(Err(e))) => failed.push(format!("{e:?}")),
                _ => failed.push("no response".into()),
            }
        }
        failed.extend(refused);
        Ok(format!(
            "{ok} answered, {} failed: {}",
            failed.len(),
            failed.first().cloned().unwrap_or_default()
        ))
    }
}

/// Makes a symbolic link `link` in the preopened directory `dir`, pointing at `target`.
#[cfg(target_arch = "wasm32")]
pub fn symlink(dir: &str, target: &str, link: &str) -> Result<String, String> {
    let (descriptor, _) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| path == dir)
        .ok_or_else(|| format!("{dir} is not preopened"))?;
    descriptor
        .symlink_at(target, link)
        .map(|()| "linked".to_string())
        .map_err(|e| format!("{e:?}"))
}

#[cfg(not(target_arch = "wasm32"))]
pub fn symlink(_dir: &str, _target: &str, _link: &str) -> Result<String, String> {
    Err("only in WebAssembly".into())
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub fn upload(_url: &str, _mib: u64) -> Result<String, String> {
        Err("only in WebAssembly".into())
    }

    pub fn fan_out(_url: &str, _count: u32) -> Result<String, String> {
        Err("only in WebAssembly".into())
    }
}

pub use imp::{fan_out, upload};
