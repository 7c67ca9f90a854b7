//! Durations in plugin configuration (`"30s"`, `"5m"`, `"1h 30m"`), each with an upper bound,
//! so a typo such as `"300000000000years"` is a configuration error, never an overflow.

use crate::{Error, ErrorExt};
use std::time::Duration;

/// The longest wait the engine carries out for a strategy (a canary's pause, a blue-green
/// bake): the host caps every wait at this, so a longer one could not mean what it says.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Parses `text` as a duration no longer than `max`; `what` names the field in errors, such as
/// "canary `pause`".
pub fn parse(what: &str, text: &str, max: Duration) -> Result<Duration, Error> {
    let duration = humantime::parse_duration(text).map_err(|e| {
        Error::invalid_config(format!(
            "{what} {text:?}: {e}; write it like 500ms, 30s or 5m"
        ))
    })?;
    if duration > max {
        return Err(Error::invalid_config(format!(
            "{what} {text:?} is longer than {}, the longest it may be",
            humantime::format_duration(max)
        )));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_durations() {
        assert_eq!(
            parse("`pause`", "1m 30s", MAX_WAIT).unwrap(),
            Duration::from_secs(90)
        );
        let long = parse("`pause`", "2h", MAX_WAIT).unwrap_err().describe();
        assert!(long.contains("longer than 1h"), "{long}");
        let huge = parse("`pause`", "300000000000years", MAX_WAIT)
            .unwrap_err()
            .describe();
        assert!(huge.contains("invalid-config"), "{huge}");
        assert!(parse("`pause`", "soon", MAX_WAIT).is_err());
    }
}
