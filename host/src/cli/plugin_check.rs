//! `engine plugins check`: runs a plugin of a pipeline through the conformance scenario of its
//! kind ([`crate::conformance`]) and reports each rule as a test.

use super::{CommandError, Format, PipelineArgs, exit, output};
use crate::config::{Pipeline, PluginDecl, Service};
use crate::conformance::{self, Report, health, provider, strategy};
use crate::port::Ports;
use crate::runtime::{LoadedPlugin, MemorySink, PluginKind, PluginPorts, Runtime, RuntimeOptions};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The plugin, by the name the pipeline gives it: a `[plugins.NAME]` table, or a built-in
    /// plugin the pipeline uses
    plugin: String,
    /// The pipeline that grants the plugin what it needs and gives the service a provider
    /// deploys (copies of it, under other names), the strategy_config a strategy is driven
    /// with, or the configuration of a health check
    #[arg(
        long = "config",
        short = 'c',
        visible_alias = "pipeline",
        value_name = "PIPELINE",
        default_value = "pipeline.toml"
    )]
    config: PathBuf,
    /// The environment whose variables and overrides apply
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
    /// Set a variable the pipeline declares (repeatable)
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = super::parse_var)]
    vars: Vec<(String, String)>,
    /// The pipeline's service to take the configuration from [default: the first that uses
    /// the plugin]
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Health checks: a target the check must judge healthy, instead of the kit's own server
    /// answering 200
    #[arg(long, value_name = "URL")]
    healthy: Option<String>,
    /// Health checks: a target the check must judge unhealthy, instead of the kit's own server
    /// answering 503
    #[arg(long, value_name = "URL")]
    unhealthy: Option<String>,
    /// Refuse the plugin if its code or capabilities differ from engine.lock, or it is not
    /// recorded there (as `engine run --locked`)
    #[arg(long)]
    locked: bool,
    /// `text` for people, `json` for programs
    #[arg(long = "output", value_enum, default_value = "text")]
    format: Format,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

pub async fn run(cli: &super::Cli, args: &CheckArgs) -> Result<(), CommandError> {
    let pipeline = PipelineArgs {
        file: Some(args.config.clone()),
        file_option: None,
        environment: args.environment.clone(),
        vars: args.vars.clone(),
        locked: args.locked,
    }
    .load()?;
    let decl = declared_or_built_in(&pipeline, &args.plugin);
    let Some(decl) = decl.as_ref() else {
        let names: Vec<&str> = pipeline.plugins.keys().map(String::as_str).collect();
        return Err(CommandError::usage(format!(
            "{} has no plugin named `{}`; its plugins are: {}",
            args.config.display(),
            args.plugin,
            names.join(", ")
        )));
    };
    let loader = Loader {
        cli,
        pipeline: &pipeline,
        name: &args.plugin,
    };
    // Loaded as a run loads it; a health check is loaded again with the kit's servers granted.
    let plugin = loader
        .load(decl, false, Arc::new(crate::runtime::TracingSink))
        .await?;
    follows_the_lock(&pipeline, &args.plugin, &plugin)?;
    let report = match plugin.kind() {
        PluginKind::Provider => check_provider(&loader, decl, plugin, args).await?,
        PluginKind::Strategy => check_strategy(&loader, plugin, args).await?,
        PluginKind::Health => {
            let reach = health::Reach::of(&plugin);
            check_health(&loader, decl, args, reach).await?
        }
    };
    print(&report, args)?;
    if report.passed() {
        Ok(())
    } else {
        Err(CommandError::reported(exit::FAILURE))
    }
}

/// engine.lock's verdict on the plugin, as `engine validate` gives it: an error under
/// `--locked`, a warning otherwise.
fn follows_the_lock(
    pipeline: &Pipeline,
    name: &str,
    plugin: &LoadedPlugin,
) -> Result<(), CommandError> {
    let only = BTreeMap::from([(name.to_string(), plugin.clone())]);
    let (errors, warnings): (Vec<_>, Vec<_>) = crate::runtime::lock_diagnostics(pipeline, &only)
        .into_iter()
        .partition(|d| d.severity == crate::config::Severity::Error);
    for w in warnings {
        tracing::warn!("{}", w.message);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(output::config_failure(pipeline.error(errors)))
    }
}

/// The plugin as the pipeline declares it, or a built-in one it does not use, granted nothing.
fn declared_or_built_in(pipeline: &Pipeline, name: &str) -> Option<PluginDecl> {
    if let Some(decl) = pipeline.plugins.get(name) {
        return Some(decl.clone());
    }
    crate::plugins::find_embedded(name).map(|_| PluginDecl {
        source: crate::plugins::PluginSource::Embedded(name.to_string()),
        grants: Default::default(),
    })
}

/// Loads the checked plugin as a run of the pipeline would.
struct Loader<'a> {
    cli: &'a super::Cli,
    pipeline: &'a Pipeline,
    name: &'a str,
}

impl Loader<'_> {
    async fn load(
        &self,
        decl: &PluginDecl,
        dry_run: bool,
        sink: Arc<dyn crate::runtime::EventSink>,
    ) -> Result<LoadedPlugin, CommandError> {
        let options = RuntimeOptions {
            dry_run,
            sink,
            local_admin_ports: super::local::admin_ports(Some(self.pipeline)),
            protected_paths: super::protected_paths(self.pipeline),
            ..self.cli.runtime_options()
        };
        let runtime = Runtime::new(options).map_err(|e| CommandError::failure(format!("{e:#}")))?;
        runtime
            .load(self.name, &decl.source, &decl.grants)
            .await
            .map_err(CommandError::failure)
    }

    fn only(&self, plugin: LoadedPlugin) -> BTreeMap<String, LoadedPlugin> {
        BTreeMap::from([(self.name.to_string(), plugin)])
    }
}

/// `live` is the provider as a run has it; it is loaded a second time as a dry run has it.
async fn check_provider(
    loader: &Loader<'_>,
    decl: &PluginDecl,
    live: LoadedPlugin,
    args: &CheckArgs,
) -> Result<Report, CommandError> {
    let services =
        provider::Services::from_pipeline(loader.pipeline, loader.name, args.service.as_deref())
            .map_err(CommandError::usage)?;
    let live = loader.only(live);
    let dry_events = MemorySink::default();
    let dry = loader.only(
        loader
            .load(decl, true, Arc::new(dry_events.clone()))
            .await?,
    );
    super::local::ensure_for(loader.pipeline).await?;
    let subject = provider::Subject {
        live: &live,
        dry: &dry,
        dry_events: &dry_events,
    };
    let rules = provider::check(&subject, &services).await;
    Ok(report(loader.name, "provider", services.describe(), rules))
}

async fn check_strategy(
    loader: &Loader<'_>,
    plugin: LoadedPlugin,
    args: &CheckArgs,
) -> Result<Report, CommandError> {
    let service = configured_service(loader.pipeline, args.service.as_deref(), |s| {
        s.strategy == loader.name
    })?;
    // A service of another strategy lends only its name; the strategy gets `{}`.
    let strategy_config = if service.strategy == loader.name {
        service.strategy_config.clone()
    } else {
        serde_json::json!({})
    };
    let template = Service {
        strategy: loader.name.to_string(),
        strategy_config,
        ..service.clone()
    };
    let plugins = loader.only(plugin);
    let ports = PluginPorts::new(&plugins);
    let driven = ports
        .strategy(&template)
        .map_err(|e| CommandError::failure(e.to_string()))?;
    let subject = strategy::Subject {
        strategy: driven.as_ref(),
        rollout: crate::port::Rollout {
            service: template.name.clone(),
            stable: Some(format!("{}-r1", template.name)),
            candidate: format!("{}-r2", template.name),
            features: Vec::new(),
            config: template.strategy_config.to_string(),
        },
    };
    let rules = strategy::check(&subject).await;
    let against = format!("strategy_config of service {}", template.name);
    Ok(report(loader.name, "strategy", against, rules))
}

async fn check_health(
    loader: &Loader<'_>,
    decl: &PluginDecl,
    args: &CheckArgs,
    reach: health::Reach,
) -> Result<Report, CommandError> {
    let service = configured_service(loader.pipeline, args.service.as_deref(), |s| {
        s.checks.iter().any(|c| c.plugin == loader.name)
    })?;
    let config = service
        .checks
        .iter()
        .find(|c| c.plugin == loader.name)
        .map_or_else(|| "{}".to_string(), |c| c.config.to_string());
    let kit = health::KitServers::start()
        .await
        .map_err(|e| CommandError::failure(format!("cannot start the check's servers: {e}")))?;
    // The kit's own servers are granted on top of what the pipeline grants, the way the
    // plugin reaches them.
    let mut decl = decl.clone();
    let (http, tcp) = kit.grants();
    if reach.tcp {
        decl.grants.allow_tcp.extend(tcp);
    }
    if reach.http {
        decl.grants.allow_http.extend(http);
    }
    let plugin = loader
        .load(&decl, false, Arc::new(crate::runtime::TracingSink))
        .await?;
    let targets = health::Targets {
        healthy: args.healthy.clone().unwrap_or_else(|| kit.healthy.clone()),
        unhealthy: match (&args.unhealthy, reach.tcp_only()) {
            (Some(url), _) => Some(url.clone()),
            (None, true) => None,
            (None, false) => Some(kit.unhealthy.clone()),
        },
        unreachable: kit.unreachable.clone(),
    };
    let subject = health::Subject {
        plugin: &plugin,
        config,
    };
    let rules = health::check(&subject, &targets).await;
    let against = format!(
        "the check configuration of service {} (healthy {}, unreachable {})",
        service.name, targets.healthy, targets.unreachable
    );
    Ok(report(loader.name, "health", against, rules))
}

/// The service whose configuration of the plugin is used: the one named, or the first that
/// uses the plugin, or (for a plugin no service uses) the first service, with `{}`.
fn configured_service<'p>(
    pipeline: &'p Pipeline,
    chosen: Option<&str>,
    uses: impl Fn(&Service) -> bool,
) -> Result<&'p Service, CommandError> {
    if let Some(name) = chosen {
        return pipeline
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CommandError::usage(format!("the pipeline has no service `{name}`")));
    }
    pipeline
        .services
        .iter()
        .find(|s| uses(s))
        .or_else(|| pipeline.services.first())
        .ok_or_else(|| {
            CommandError::usage("the pipeline has no service to take a configuration from")
        })
}

fn report(plugin: &str, kind: &'static str, against: String, rules: conformance::Rules) -> Report {
    Report {
        plugin: plugin.to_string(),
        kind,
        against,
        results: rules.into_results(),
    }
}

fn print(report: &Report, args: &CheckArgs) -> Result<(), CommandError> {
    match args.format {
        Format::Text => output::print_text(&conformance::report::text(report)),
        Format::Json => output::print_json(&conformance::report::json(report)),
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, conformance::report::junit(report))
            .map_err(|e| CommandError::failure(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}
