//! Secrets in JSON request bodies. A plugin may write a secret's placeholder into a string of
//! a JSON request body (the header value of a Cloud Scheduler job it creates, say), and the
//! egress hook fills in the value for destinations the secret is granted, as it does in
//! headers: the plugin never holds the value. For that the body is collected, up to
//! [`MAX_COLLECTED`] bytes; a larger one is streamed as written, its placeholders left as
//! they are (a placeholder carries nothing of the value).

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// The largest JSON body whose placeholders are filled in: far above an API call's, well
/// below what would strain the engine's memory with [`super::egress::MAX_REQUESTS_IN_FLIGHT`]
/// of them open.
pub const MAX_COLLECTED: usize = 1 << 20;

/// Whether the request says its body is JSON (`application/json`, `…+json`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A request body read for filling in.
pub enum Read {
    /// All of it.
    Whole(Bytes),
    /// More than [`MAX_COLLECTED`]: the same body, what was read put back in front.
    TooLarge(WasiBody),
}

/// Reads the body up to `max` bytes.
pub async fn read(mut body: WasiBody, max: usize) -> Result<Read, HttpError> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            HttpError::InternalError(Some(format!("the plugin's request body: {e:?}")))
        })?;
        // Trailers are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        collected.extend_from_slice(&data);
        if collected.len() > max {
            let prefixed = Prefixed {
                prefix: Some(collected.freeze()),
                rest: body,
            };
            return Ok(Read::TooLarge(prefixed.boxed_unsync()));
        }
    }
    Ok(Read::Whole(collected.freeze()))
}

/// `text` with each placeholder replaced by its value, escaped as the inside of a JSON string
/// (where a serialized placeholder stands), so no value can end the string it is put in.
pub fn fill(text: &str, values: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (placeholder, value) in values {
        let quoted = serde_json::Value::String(value.clone()).to_string();
        out = out.replace(placeholder.as_str(), &quoted[1..quoted.len() - 1]);
    }
    out
}

/// A body whose first bytes were already read.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: WasiBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn body(text: &'static str) -> WasiBody {
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    #[test]
    fn json_is_told_by_its_media_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&headers), json, "{value}");
        }
    }

    #[test]
    fn a_value_cannot_end_the_string_it_is_put_in() {
        let values = [("engine-secret-k-1".to_string(), r#"a"b\c"#.to_string())];
        let filled = fill(r#"{"h":{"X-Key":"engine-secret-k-1"}}"#, &values);
        let parsed: serde_json::Value = serde_json::from_str(&filled).unwrap();
        assert_eq!(parsed["h"]["X-Key"], r#"a"b\c"#);
        assert_eq!(parsed.as_object().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_large_body_is_given_back_whole() {
        match read(body("0123456789"), 100).await.unwrap() {
            Read::Whole(b) => assert_eq!(b, "0123456789"),
            Read::TooLarge(_) => panic!("small body refused"),
        }
        let Read::TooLarge(rest) = read(body("0123456789"), 4).await.unwrap() else {
            panic!("large body collected");
        };
        let all = rest.collect().await.unwrap().to_bytes();
        assert_eq!(all, "0123456789");
    }
}
