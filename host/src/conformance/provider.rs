//! The provider scenario: deploys, moves traffic, retires and destroys conformance copies of a
//! pipeline's service on the platform the pipeline points at, checking after every call what
//! docs/provider-contract.md promises. It goes through the executor's own port
//! ([`crate::port::Platform`]), so it sees the provider exactly as a run does.

use super::{Rules, Violation, violated};
use crate::config::{Ingress, Pipeline, PluginRole, Service, Severity};
use crate::port::{EndpointKind, ErrorKind, Feature, PlanAction, Platform, Ports, TrafficShare};
use crate::runtime::port::PluginPorts;
use crate::runtime::{LoadedPlugin, MemorySink, PluginEvent};
use std::collections::BTreeMap;

/// The services a provider is checked with: copies of the pipeline's own, renamed so the
/// check never touches what the pipeline deploys.
#[derive(Debug, Clone)]
pub struct Services {
    /// The main one.
    pub checked: Service,
    /// The same service with a changed spec (one more environment variable): a new release.
    pub updated: Service,
    /// A second service on the same provider, for the concurrency rule.
    pub other: Option<Service>,
}

/// The suffixes of the conformance copies' names.
const CHECKED_SUFFIX: &str = "-check-a";
const OTHER_SUFFIX: &str = "-check-b";

impl Services {
    /// Copies of the first service of `pipeline` on `provider` (or of `chosen`), and of
    /// another service on it when there is one.
    pub fn from_pipeline(
        pipeline: &Pipeline,
        provider: &str,
        chosen: Option<&str>,
    ) -> Result<Services, String> {
        let on_provider: Vec<&Service> = pipeline
            .services
            .iter()
            .filter(|s| s.provider == provider)
            .collect();
        let template = match chosen {
            Some(name) => *on_provider.iter().find(|s| s.name == name).ok_or_else(|| {
                format!("the pipeline has no service `{name}` on the provider `{provider}`")
            })?,
            None => *on_provider.first().ok_or_else(|| {
                format!(
                    "no service of the pipeline uses the provider `{provider}`; add one (its image \
                     and provider_config are what the check deploys, under another name)"
                )
            })?,
        };
        let checked = renamed(template, CHECKED_SUFFIX);
        let mut updated = checked.clone();
        updated
            .env
            .insert("ENGINE_CONFORMANCE_RELEASE".into(), "2".into());
        let other = on_provider
            .iter()
            .find(|s| s.name != template.name)
            .map(|s| renamed(s, OTHER_SUFFIX));
        Ok(Services {
            checked,
            updated,
            other,
        })
    }

    pub fn describe(&self) -> String {
        match &self.other {
            Some(other) => format!("services {} and {}", self.checked.name, other.name),
            None => format!("service {}", self.checked.name),
        }
    }
}

fn renamed(service: &Service, suffix: &str) -> Service {
    Service {
        name: format!("{}{suffix}", service.name),
        depends_on: Vec::new(),
        ..service.clone()
    }
}

/// The deployment ids the scenario deploys with, as a run's would look.
const FIRST: &str = "r1";
const SECOND: &str = "r2";
const THIRD: &str = "r3";

/// The loaded provider twice: as a run has it, and as a dry run (`engine plan`) has it.
pub struct Subject<'a> {
    pub live: &'a BTreeMap<String, LoadedPlugin>,
    pub dry: &'a BTreeMap<String, LoadedPlugin>,
    /// The dry run's events, where a blocked write shows.
    pub dry_events: &'a MemorySink,
}

/// Runs the scenario and returns every rule's result; removes what it deployed, whatever
/// happened.
pub async fn check(subject: &Subject<'_>, services: &Services) -> Rules {
    let live = PluginPorts::new(subject.live);
    let dry = PluginPorts::new(subject.dry);
    let mut rules = Rules::default();
    let platforms = (|| {
        Ok::<_, crate::port::PortError>(Platforms {
            checked: live.platform(&services.checked)?,
            updated: live.platform(&services.updated)?,
            other: services
                .other
                .as_ref()
                .map(|s| live.platform(s))
                .transpose()?,
            dry: dry.platform(&services.checked)?,
        })
    })();
    let platforms = match platforms {
        Ok(p) => p,
        Err(e) => {
            rules.skip("provider", "the plugin is a provider", e.to_string());
            return rules;
        }
    };
    let plugin = &subject.live[&services.checked.provider];
    let scenario = Scenario {
        p: &platforms,
        features: plugin.info().features.clone(),
        ingress: services.checked.ingress,
        dry_events: subject.dry_events,
    };
    if scenario.validate(&mut rules, plugin, services).await {
        scenario.run(&mut rules).await;
    }
    platforms.clean_up(services).await;
    rules
}

struct Platforms<'a> {
    checked: Box<dyn Platform + 'a>,
    updated: Box<dyn Platform + 'a>,
    other: Option<Box<dyn Platform + 'a>>,
    dry: Box<dyn Platform + 'a>,
}

impl Platforms<'_> {
    /// Destroys both services, so a failed check leaves nothing running; says so when it
    /// cannot.
    async fn clean_up(&self, services: &Services) {
        let mut all = vec![(&self.checked, &services.checked.name)];
        if let (Some(p), Some(s)) = (&self.other, &services.other) {
            all.push((p, &s.name));
        }
        for (platform, name) in all {
            if let Err(e) = platform.destroy().await {
                tracing::warn!(
                    "could not remove `{name}` after the check ({e}); it may still be on the platform"
                );
            }
        }
    }
}

struct Scenario<'a> {
    p: &'a Platforms<'a>,
    features: Vec<Feature>,
    ingress: Ingress,
    dry_events: &'a MemorySink,
}

/// A split as the contract compares it: 0 % entries left out, in revision order.
fn normal(split: &[TrafficShare]) -> Vec<TrafficShare> {
    let mut split: Vec<TrafficShare> = split.iter().filter(|t| t.percent > 0).cloned().collect();
    split.sort_by(|a, b| a.revision.cmp(&b.revision));
    split
}

fn show(split: &[TrafficShare]) -> String {
    let parts: Vec<String> = split
        .iter()
        .map(|t| format!("{} {}%", t.revision, t.percent))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn share(revision: &str, percent: u8) -> TrafficShare {
    TrafficShare::new(revision, percent)
}

impl Scenario<'_> {
    fn has(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }

    /// The provider's own `validate` must accept the service; without that nothing else can
    /// be checked.
    async fn validate(&self, rules: &mut Rules, plugin: &LoadedPlugin, s: &Services) -> bool {
        rules
            .check(
                "validate",
                "the provider's validate accepts the service's configuration",
                async {
                    let problems = plugin
                        .validate_configuration(&s.checked, PluginRole::Provider)
                        .await?;
                    let errors: Vec<String> = problems
                        .iter()
                        .filter(|p| p.severity == Severity::Error)
                        .map(|p| format!("{} {}", p.path, p.message))
                        .collect();
                    if !errors.is_empty() {
                        violated!(
                            "it refuses the configuration of `{}`: {} (fix the pipeline's service, or the provider)",
                            s.checked.name,
                            errors.join("; ")
                        );
                    }
                    Ok(())
                },
            )
            .await
            .is_some()
    }

    async fn run(&self, rules: &mut Rules) {
        let clean = self.destroy_missing(rules).await;
        if clean.is_none() {
            return skip_rest(rules, "the service could not be removed before the check");
        }
        self.plan_dry_run(rules).await;
        self.plan_create(rules).await;
        let Some(first) = self.deploy_repeat(rules).await else {
            return skip_rest(rules, "the first deploy failed");
        };
        if self.traffic_all(rules, &first).await.is_none() {
            return skip_rest(rules, "traffic could not be sent to the first revision");
        }
        self.plan_no_change(rules).await;
        self.reads_repeat(rules).await;
        let Some(second) = self.deploy_update(rules, &first).await else {
            return skip_rest(rules, "the second deploy failed");
        };
        self.traffic_split(rules, &first, &second).await;
        self.endpoints(rules, &first, &second).await;
        self.typed_errors(rules, &second).await;
        self.retire(rules, &first, &second).await;
        self.concurrent(rules).await;
        self.destroy(rules).await;
    }

    async fn destroy_missing(&self, rules: &mut Rules) -> Option<()> {
        rules
            .check(
                "destroy-missing",
                "destroy of a service that does not exist succeeds, and read then finds nothing",
                async {
                    for _ in 0..2 {
                        self.p.checked.destroy().await?;
                    }
                    if let Some(other) = &self.p.other {
                        other.destroy().await?;
                    }
                    if let Some(state) = self.p.checked.read().await? {
                        violated!(
                            "read still finds the service after destroy succeeded ({} revisions)",
                            state.revisions.len()
                        );
                    }
                    Ok(())
                },
            )
            .await
    }

    async fn plan_dry_run(&self, rules: &mut Rules) {
        rules
            .check(
                "plan-writes-nothing",
                "read and plan work in the dry-run sandbox of `engine plan` and change nothing",
                async {
                    self.dry_events.clear();
                    let current = self.p.dry.read().await?;
                    let plan = self.p.dry.plan(current.as_ref()).await?;
                    let writes: Vec<String> = self
                        .dry_events
                        .events()
                        .into_iter()
                        .filter_map(|e| match e {
                            PluginEvent::WouldCall { method, url, .. } => {
                                Some(format!("{method} {url}"))
                            }
                            _ => None,
                        })
                        .collect();
                    if !writes.is_empty() {
                        violated!(
                            "during plan it tried to change the platform: {}",
                            writes.join(", ")
                        );
                    }
                    if plan.action != PlanAction::Create {
                        violated!(
                            "plan of a service that does not exist says {}, not create",
                            plan.action.label()
                        );
                    }
                    if self.p.checked.read().await?.is_some() {
                        violated!("after a dry-run plan the service exists: plan created it");
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn plan_create(&self, rules: &mut Rules) {
        rules
            .check(
                "plan-create",
                "plan of a service that does not exist says create, the same every time",
                async {
                    let first = self.p.checked.plan(None).await?;
                    let again = self.p.checked.plan(None).await?;
                    if first.action != PlanAction::Create {
                        violated!("plan says {}, not create", first.action.label());
                    }
                    if first != again {
                        violated!("two plans of the same spec differ: {first:?} then {again:?}");
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn deploy_repeat(&self, rules: &mut Rules) -> Option<String> {
        rules
            .check(
                "deploy-repeat",
                "deploy repeated with the same deployment id (a crash before the checkpoint) returns the same revision and creates no other",
                async {
                    let revision = self.p.checked.deploy(FIRST).await?;
                    let count = self.revision_count().await?;
                    let again = self.p.checked.deploy(FIRST).await?;
                    if again != revision {
                        violated!("the first deploy returned {revision}, the repeat {again}: a resumed run would roll out a second revision");
                    }
                    let after = self.revision_count().await?;
                    if after != count {
                        violated!("the repeated deploy created a revision ({count} before, {after} after)");
                    }
                    let state = self.p.checked.read().await?;
                    if !state.iter().flat_map(|s| &s.revisions).any(|r| r.id == revision) {
                        violated!("read does not list the deployed revision {revision}");
                    }
                    Ok(revision)
                },
            )
            .await
    }

    async fn revision_count(&self) -> Result<usize, Violation> {
        Ok(self
            .p
            .checked
            .read()
            .await?
            .map_or(0, |s| s.revisions.len()))
    }

    /// Sets `split` twice and reads it back: what `set-traffic` returned for must be in effect.
    async fn set_and_read_back(&self, split: &[TrafficShare]) -> Result<(), Violation> {
        for attempt in ["", " (repeated)"] {
            self.p.checked.set_traffic(split).await?;
            let read = self.p.checked.get_traffic().await?;
            if normal(&read) != normal(split) {
                violated!(
                    "after set-traffic {}{attempt} returned, get-traffic reports {}: the split must have taken effect when set-traffic returns",
                    show(split),
                    show(&read)
                );
            }
        }
        Ok(())
    }

    async fn traffic_all(&self, rules: &mut Rules, first: &str) -> Option<()> {
        rules
            .check(
                "traffic-round-trip",
                "set-traffic then get-traffic gives back the split, also when repeated",
                async {
                    self.set_and_read_back(&[share(first, 100)]).await?;
                    let state = self.p.checked.read().await?;
                    let traffic = state.map(|s| s.traffic).unwrap_or_default();
                    if normal(&traffic) != [share(first, 100)] {
                        violated!(
                            "read reports traffic {} after the split {first} 100%",
                            show(&traffic)
                        );
                    }
                    Ok(())
                },
            )
            .await
    }

    async fn plan_no_change(&self, rules: &mut Rules) {
        rules
            .check(
                "plan-no-change",
                "plan right after a deploy that took all traffic reports no change, and an update for a changed spec",
                async {
                    let current = self.p.checked.read().await?;
                    let plan = self.p.checked.plan(current.as_ref()).await?;
                    if plan.action != PlanAction::NoChange {
                        let changes: Vec<&str> = plan.changes.iter().map(|c| c.field.as_str()).collect();
                        violated!(
                            "plan says {} ({}) for the spec just deployed: every `engine plan` after a deploy would show a phantom update (is `deployed` the serving revision's configuration?)",
                            plan.action.label(),
                            if changes.is_empty() { plan.summary.clone() } else { changes.join(", ") }
                        );
                    }
                    let update = self.p.updated.plan(current.as_ref()).await?;
                    if update.action != PlanAction::Update {
                        violated!("plan of the spec with one more environment variable says {}, not update", update.action.label());
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn reads_repeat(&self, rules: &mut Rules) {
        rules
            .check(
                "reads-repeat",
                "read, get-traffic and endpoints give the same answer when called again",
                async {
                    let (a, b) = (self.p.checked.read().await?, self.p.checked.read().await?);
                    if a != b {
                        violated!("two reads in a row differ: {a:?} then {b:?}");
                    }
                    let (a, b) = (
                        self.p.checked.get_traffic().await?,
                        self.p.checked.get_traffic().await?,
                    );
                    if normal(&a) != normal(&b) {
                        violated!(
                            "two get-traffic calls in a row differ: {} then {}",
                            show(&a),
                            show(&b)
                        );
                    }
                    let (a, b) = (
                        self.p.checked.endpoints(None).await?,
                        self.p.checked.endpoints(None).await?,
                    );
                    if a != b {
                        violated!("two endpoints calls in a row differ: {a:?} then {b:?}");
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn deploy_update(&self, rules: &mut Rules, first: &str) -> Option<String> {
        rules
            .check(
                "deploy-takes-no-traffic",
                "a new release deploys as a new revision that takes no traffic until set-traffic gives it some",
                async {
                    let second = self.p.updated.deploy(SECOND).await?;
                    if second == first {
                        violated!("the deploy of a changed spec with a new deployment id returned the old revision {first}");
                    }
                    let again = self.p.updated.deploy(SECOND).await?;
                    if again != second {
                        violated!("the repeated deploy returned {again}, the first {second}");
                    }
                    let traffic = self.p.checked.get_traffic().await?;
                    if normal(&traffic) != [share(first, 100)] {
                        violated!(
                            "after deploying {second}, traffic is {}: the new revision must take none before set-traffic (a canary starts at 0 %)",
                            show(&traffic)
                        );
                    }
                    Ok(second)
                },
            )
            .await
    }

    async fn traffic_split(&self, rules: &mut Rules, first: &str, second: &str) {
        const RULE: &str = "traffic-split";
        const DEMANDS: &str = "a split between two revisions reads back as set, also when repeated";
        if !self.has(Feature::TrafficSplit) {
            rules.skip(RULE, DEMANDS, "the provider does not declare traffic-split");
        } else {
            rules
                .check(RULE, DEMANDS, async {
                    self.set_and_read_back(&[share(second, 10), share(first, 90)])
                        .await
                })
                .await;
        }
        // Every provider must take a whole move with the old revision at 0 %.
        rules
            .check(
                "traffic-zero-entry",
                "a split that lists the old revision at 0 % moves all traffic to the new one",
                async {
                    self.set_and_read_back(&[share(second, 100), share(first, 0)])
                        .await
                },
            )
            .await;
    }

    async fn endpoints(&self, rules: &mut Rules, first: &str, second: &str) {
        rules
            .check(
                "endpoints",
                "endpoints are absolute http(s) URLs, and a revision's own URL names that revision (also at 0 %)",
                async {
                    let service = self.p.checked.endpoints(None).await?;
                    if service.is_empty() && self.ingress != Ingress::None {
                        violated!("endpoints(service) lists no URL for a service with ingress");
                    }
                    for revision in [first, second] {
                        let listed = self.p.checked.endpoints(Some(revision)).await?;
                        let all = service.iter().chain(&listed);
                        if let Some(bad) = all.clone().find(|e| !absolute(&e.url)) {
                            violated!("`{}` is not an absolute http(s) URL", bad.url);
                        }
                        let own: Vec<_> = listed.iter().filter(|e| e.kind == EndpointKind::Revision).collect();
                        if let Some(wrong) = own.iter().find(|e| e.revision.as_deref() != Some(revision)) {
                            violated!(
                                "endpoints({revision}) lists {} as the URL of revision {}",
                                wrong.url,
                                wrong.revision.as_deref().unwrap_or("none")
                            );
                        }
                        if self.has(Feature::RevisionUrls) && own.is_empty() && self.ingress != Ingress::None {
                            violated!("the provider declares revision-urls, but endpoints({revision}) lists no URL of the revision");
                        }
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn typed_errors(&self, rules: &mut Rules, second: &str) {
        rules
            .check(
                "typed-errors",
                "traffic for a revision that does not exist is refused with an error that is not retried, and changes nothing",
                async {
                    let missing = "engine-conformance-missing";
                    match self.p.checked.set_traffic(&[share(missing, 100)]).await {
                        Ok(()) => violated!("set-traffic to the revision `{missing}`, which does not exist, succeeded"),
                        Err(e) if matches!(e.kind, ErrorKind::Transient | ErrorKind::RateLimited { .. }) => {
                            violated!("the refusal is a {:?} error, which the engine retries in vain (use not-found or invalid-config): {}", e.kind, e.message)
                        }
                        Err(_) => {}
                    }
                    let traffic = self.p.checked.get_traffic().await?;
                    if normal(&traffic) != [share(second, 100)] {
                        violated!("after the refused split, traffic is {}", show(&traffic));
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn retire(&self, rules: &mut Rules, first: &str, second: &str) {
        rules
            .check(
                "retire",
                "retire of a revision without traffic succeeds, also repeated and for one that does not exist, and leaves the serving one alone",
                async {
                    self.p.checked.retire("engine-conformance-missing").await?;
                    for _ in 0..2 {
                        self.p.checked.retire(first).await?;
                    }
                    let Some(state) = self.p.checked.read().await? else {
                        violated!("after retiring {first}, read finds no service at all");
                    };
                    let ids: Vec<&str> = state.revisions.iter().map(|r| r.id.as_str()).collect();
                    if self.has(Feature::RetireRevisions) && ids.contains(&first) {
                        violated!("read still lists the retired revision {first} (the provider declares retire-revisions)");
                    }
                    if !ids.contains(&second) {
                        violated!("after retiring {first}, read no longer lists the serving revision {second}");
                    }
                    let traffic = self.p.checked.get_traffic().await?;
                    if normal(&traffic) != [share(second, 100)] {
                        violated!("after retire, traffic is {}", show(&traffic));
                    }
                    Ok(())
                },
            )
            .await;
    }

    async fn concurrent(&self, rules: &mut Rules) {
        const RULE: &str = "concurrent-services";
        const DEMANDS: &str = "calls for two services at the same time do not interfere";
        let Some(other) = &self.p.other else {
            return rules.skip(
                RULE,
                DEMANDS,
                "the pipeline has one service on this provider; add a second to check this",
            );
        };
        rules
            .check(RULE, DEMANDS, async {
                let (a, b) = futures::join!(self.p.checked.deploy(THIRD), other.deploy(FIRST));
                let (a, b) = (a?, b?);
                if a == b {
                    violated!("both services' deploys returned the revision {a}");
                }
                let splits = ([share(&a, 100)], [share(&b, 100)]);
                let (x, y) = futures::join!(
                    self.p.checked.set_traffic(&splits.0),
                    other.set_traffic(&splits.1)
                );
                x?;
                y?;
                let (x, y) = futures::join!(self.p.checked.get_traffic(), other.get_traffic());
                let (x, y) = (x?, y?);
                if normal(&x) != splits.0 || normal(&y) != splits.1 {
                    violated!(
                        "after setting {} and {} at the same time, the services report {} and {}",
                        show(&splits.0),
                        show(&splits.1),
                        show(&x),
                        show(&y)
                    );
                }
                let theirs = other.read().await?.map(|s| s.revisions).unwrap_or_default();
                if theirs.iter().any(|r| r.id == a) {
                    violated!("read of the second service lists {a}, a revision of the first");
                }
                Ok(())
            })
            .await;
    }

    async fn destroy(&self, rules: &mut Rules) {
        rules
            .check(
                "destroy",
                "destroy removes the service (read finds nothing), and a repeat succeeds",
                async {
                    for _ in 0..2 {
                        self.p.checked.destroy().await?;
                    }
                    if self.p.checked.read().await?.is_some() {
                        violated!("read still finds the service after destroy");
                    }
                    Ok(())
                },
            )
            .await;
    }
}

fn absolute(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// Marks the rules a failed step left unchecked.
fn skip_rest(rules: &mut Rules, why: &str) {
    rules.skip("remaining", "the rest of the scenario", why);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_compare_without_zero_entries_in_any_order() {
        assert_eq!(
            normal(&[share("b", 0), share("a", 100)]),
            normal(&[share("a", 100)])
        );
        assert_eq!(
            normal(&[share("b", 10), share("a", 90)]),
            normal(&[share("a", 90), share("b", 10)])
        );
    }

    #[test]
    fn only_absolute_web_urls_count() {
        assert!(absolute("https://api.example.com"));
        assert!(absolute("http://127.0.0.1:8080/"));
        assert!(!absolute("/healthz"));
        assert!(!absolute("ftp://example.com"));
        assert!(!absolute("api.example.com"));
    }
}
