//! A rejected release is not deployed again by accident. When a rollout is rolled back or the
//! platform refuses the revision, Cloud Run (and others) may keep the rejected spec as the
//! service's configuration; running the same pipeline again must say that this release was
//! rejected, not that nothing changed, and not quietly try it again. `--retry-rejected` does.
//!
//! A release is recognised by its digest ([`crate::config::Service::release_digest`]), which
//! every history row of an attempt carries.

use crate::state::RevisionRecord;

/// The history outcomes that end (or begin) an attempt to deploy a release.
const ATTEMPTS: &[&str] = &["deployed", "promoted", "aborted", "deploy-failed"];

/// The outcomes of an attempt that rejected its release.
const REJECTIONS: &[&str] = &["aborted", "deploy-failed"];

/// Why a release is not deployed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub run_id: Option<i64>,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let run = self
            .run_id
            .map_or_else(|| "an earlier run".to_string(), |id| format!("run {id}"));
        write!(
            f,
            "this release was rejected in {run}: {}\nnothing was deployed; change the service (its image, env, config…) or, once what failed is fixed outside the pipeline, run again with --retry-rejected",
            self.reason
        )
    }
}

/// The rejection of `release`, when the service's latest attempt (since it was last destroyed)
/// was this release and it was rejected. `history` is newest first.
pub(super) fn rejection(history: &[RevisionRecord], release: &str) -> Option<Rejection> {
    let latest = history
        .iter()
        .take_while(|r| r.outcome != "destroyed")
        .find(|r| r.release.is_some() && ATTEMPTS.contains(&r.outcome.as_str()))?;
    let rejected =
        REJECTIONS.contains(&latest.outcome.as_str()) && latest.release.as_deref() == Some(release);
    rejected.then(|| Rejection {
        run_id: latest.run_id,
        reason: latest
            .detail
            .clone()
            .unwrap_or_else(|| "no reason was recorded".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(outcome: &str, release: Option<&str>, run: i64) -> RevisionRecord {
        RevisionRecord {
            revision: format!("api-r{run}"),
            run_id: Some(run),
            recorded_ms: 0,
            traffic: 0,
            outcome: outcome.into(),
            detail: Some(format!("reason {run}")),
            release: release.map(String::from),
        }
    }

    #[test]
    fn the_latest_attempt_decides() {
        let aborted = [
            row("aborted", Some("b"), 2),
            row("deployed", Some("b"), 2),
            row("promoted", Some("a"), 1),
        ];
        assert_eq!(
            rejection(&aborted, "b"),
            Some(Rejection {
                run_id: Some(2),
                reason: "reason 2".into()
            })
        );
        // Another release is not rejected by it, nor is the one that served before.
        assert_eq!(rejection(&aborted, "c"), None);
        assert_eq!(rejection(&aborted, "a"), None);

        // Tried again and promoted: no longer rejected.
        let retried = [row("promoted", Some("b"), 3), row("deployed", Some("b"), 3)];
        let history: Vec<_> = retried.iter().chain(&aborted).cloned().collect();
        assert_eq!(rejection(&history, "b"), None);

        // A failed deploy rejects; rows of other commands and of old engines do not count.
        let failed = [
            row("rolled-back-to", None, 9),
            row("retired", None, 8),
            row("deploy-failed", Some("d"), 7),
        ];
        assert_eq!(rejection(&failed, "d").unwrap().run_id, Some(7));
        assert_eq!(rejection(&[row("aborted", None, 1)], "d"), None);

        // A destroyed service starts over.
        let destroyed = [row("destroyed", None, 5), row("aborted", Some("b"), 4)];
        assert_eq!(rejection(&destroyed, "b"), None);
    }

    #[test]
    fn the_refusal_says_when_why_and_what_to_do() {
        let text = Rejection {
            run_id: Some(4),
            reason: "health check `http` failed".into(),
        }
        .to_string();
        assert!(
            text.starts_with("this release was rejected in run 4: health check `http` failed\n")
        );
        assert!(text.contains("--retry-rejected"), "{text}");
    }
}
