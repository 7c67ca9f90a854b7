//! A service deployed in several places (a Cloud Run service in three regions) is checked in
//! each of them: a revision that is healthy in one region and broken in another is broken.
//!
//! The provider contract says how places show: the provider's `endpoints` for a revision list,
//! per place and in the same order, the service's URL and the revision's. Each check then runs
//! once per place, against that place's endpoints alone (so every run has the check's whole
//! time budget, and no check plugin needs to know about regions), and its verdict is the worst
//! of the places'.

use super::bindings::types::{Endpoint, EndpointKind};
use crate::port::{CheckReport, PortError, Verdict};

/// How many places one check runs in at the same time.
pub const MAX_PLACES_AT_ONCE: usize = 8;

/// The endpoints one run of a check gets, and the place's name for people (the revision's URL
/// without its scheme) when there are several places.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub label: Option<String>,
    pub endpoints: Vec<Endpoint>,
}

/// The places `revision` runs in, from the provider's endpoints: one per revision URL when
/// there are several, each with the service URL of the same position; otherwise one place
/// with every endpoint.
pub fn places(endpoints: Vec<Endpoint>, revision: &str) -> Vec<Place> {
    let (revisions, services): (Vec<Endpoint>, Vec<Endpoint>) = endpoints
        .into_iter()
        .partition(|e| e.kind == EndpointKind::Revision && e.revision.as_deref() == Some(revision));
    if revisions.len() <= 1 {
        let endpoints = services.into_iter().chain(revisions).collect();
        return vec![Place {
            label: None,
            endpoints,
        }];
    }
    let paired = services.len() == revisions.len();
    revisions
        .into_iter()
        .enumerate()
        .map(|(i, own)| {
            let mut endpoints = if paired {
                vec![services[i].clone()]
            } else {
                services.clone()
            };
            // The whole URL, not its host: places may share a host (a gateway, a test server).
            let label = own
                .url
                .split_once("://")
                .map_or(&*own.url, |(_, rest)| rest);
            let label = label.trim_end_matches('/').to_string();
            endpoints.push(own);
            Place {
                label: Some(label),
                endpoints,
            }
        })
        .collect()
}

/// One check's result over every place: the worst verdict, each place's message after its
/// name; a place where the check could not run makes the check fail to run.
pub fn combine(
    results: Vec<(Option<String>, Result<CheckReport, PortError>)>,
) -> Result<CheckReport, PortError> {
    if results.len() == 1 {
        return results
            .into_iter()
            .next()
            .map(|(_, r)| r)
            .expect("one result");
    }
    let mut worst = Verdict::Healthy;
    let mut messages = Vec::new();
    for (label, result) in results {
        let label = label.unwrap_or_default();
        match result {
            Err(e) => {
                return Err(PortError {
                    kind: e.kind,
                    message: super::untrusted::text(&format!("{label}: {}", e.message)),
                });
            }
            Ok(report) => {
                worst = worse(worst, report.verdict);
                messages.push(format!("{label}: {}", report.message));
            }
        }
    }
    // Each message is bounded, their sum is too: it is printed and stored like one.
    Ok(CheckReport {
        verdict: worst,
        message: super::untrusted::text(&messages.join("; ")),
    })
}

fn worse(a: Verdict, b: Verdict) -> Verdict {
    let rank = |v: Verdict| match v {
        Verdict::Healthy => 0,
        Verdict::Inconclusive => 1,
        Verdict::Unhealthy => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::ErrorKind;

    fn endpoint(url: &str, revision: Option<&str>) -> Endpoint {
        Endpoint {
            url: url.into(),
            kind: match revision {
                Some(_) => EndpointKind::Revision,
                None => EndpointKind::Service,
            },
            revision: revision.map(String::from),
        }
    }

    #[test]
    fn each_region_is_a_place_with_its_own_urls() {
        let endpoints = vec![
            endpoint("https://api-ew.a.run.app", None),
            endpoint("https://r2---api-ew.a.run.app", Some("api-r2")),
            endpoint("https://api-uc.a.run.app", None),
            endpoint("https://r2---api-uc.a.run.app", Some("api-r2")),
        ];
        let found = places(endpoints.clone(), "api-r2");
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].label.as_deref(), Some("r2---api-uc.a.run.app"));
        assert_eq!(
            found[1].endpoints,
            [endpoints[2].clone(), endpoints[3].clone()]
        );

        // One region: one place, everything in it, as before.
        let one = places(endpoints[..2].to_vec(), "api-r2");
        assert_eq!(
            one,
            [Place {
                label: None,
                endpoints: endpoints[..2].to_vec()
            }]
        );
    }

    #[test]
    fn the_worst_place_decides() {
        let report = |verdict, message: &str| {
            Ok(CheckReport {
                verdict,
                message: message.into(),
            })
        };
        let combined = combine(vec![
            (Some("ew".into()), report(Verdict::Healthy, "200")),
            (Some("uc".into()), report(Verdict::Unhealthy, "status 503")),
        ])
        .unwrap();
        assert_eq!(combined.verdict, Verdict::Unhealthy);
        assert_eq!(combined.message, "ew: 200; uc: status 503");

        let failed = combine(vec![
            (Some("ew".into()), report(Verdict::Healthy, "200")),
            (
                Some("uc".into()),
                Err(PortError {
                    kind: ErrorKind::Transient,
                    message: "timed out".into(),
                }),
            ),
        ]);
        assert_eq!(failed.unwrap_err().message, "uc: timed out");

        // However many places a provider lists, the combined message stays one message long.
        let long = "x".repeat(super::super::untrusted::MAX_TEXT);
        let many = (0..3)
            .map(|i| (Some(format!("place-{i}")), report(Verdict::Healthy, &long)))
            .collect();
        let combined = combine(many).unwrap().message;
        assert!(
            combined.len() < 2 * super::super::untrusted::MAX_TEXT,
            "{}",
            combined.len()
        );
        assert!(combined.ends_with("more bytes)"));
    }

    #[test]
    fn a_provider_lists_a_bounded_number_of_endpoints() {
        use super::super::plugin::check::{MAX_ENDPOINTS, endpoint_count};
        assert!(endpoint_count(MAX_ENDPOINTS).is_ok());
        let e = endpoint_count(MAX_ENDPOINTS + 1).unwrap_err();
        assert!(e.contains("over the limit of 256"), "{e}");
    }
}
