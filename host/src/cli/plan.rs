//! `engine plan`: what `engine run` would do, from a dry run the runtime enforces.

use super::CommandError;
use crate::redact::redactor;
use crate::runtime::events::{EventSink, PluginEvent, TracingSink};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    scope: super::Scope,
    /// Plan a release again although its last attempt was rejected, as `engine run
    /// --retry-rejected` would deploy it
    #[arg(long)]
    retry_rejected: bool,
    /// Also write the plan as JSON to this file
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// `text` for people, `json`: the document `--out` writes, on stdout
    #[arg(long, value_enum, default_value = "text")]
    output: super::Format,
    /// Send no secret during the plan: a plugin request that needs one is refused (for plans
    /// of untrusted changes)
    #[arg(long)]
    no_secrets: bool,
}

/// Keeps the blocked requests for the report and passes everything else to the log.
#[derive(Default)]
struct DryRunSink {
    would_call: Mutex<Vec<(String, String, String)>>,
}

impl EventSink for DryRunSink {
    fn event(&self, event: PluginEvent) {
        match event {
            PluginEvent::WouldCall {
                plugin,
                method,
                url,
            } => self
                .would_call
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((plugin, method, url)),
            other => TracingSink.event(other),
        }
    }
}

pub async fn run(cli: &super::Cli, args: &PlanArgs) -> Result<(), CommandError> {
    let pipeline = args.scope.pipeline.load()?;
    let sink = Arc::new(DryRunSink::default());
    let options = crate::runtime::RuntimeOptions {
        dry_run: true,
        withhold_secrets: args.no_secrets,
        local_admin_ports: super::local::admin_ports(Some(&pipeline)),
        protected_paths: super::protected_paths(&pipeline),
        sink: sink.clone(),
        ..cli.runtime_options()
    };
    let runtime = crate::runtime::Runtime::new(options)
        .map_err(|e| CommandError::failure(format!("{e:#}")))?;
    let plugins = crate::runtime::check_plugins(&pipeline, &runtime)
        .await
        .map_err(super::output::config_failure)?;
    // Reading what is deployed needs the platform; starting an empty one changes nothing.
    super::local::ensure_for(&pipeline).await?;
    let state = earlier_state(&args.scope).await?;
    let inputs = crate::run::plan::PlanInputs {
        state: state.as_ref(),
        retry_rejected: args.retry_rejected,
    };
    let plans = crate::run::plan::plan(&pipeline, &plugins, inputs).await;
    let would_call = sink
        .would_call
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();

    let document = serde_json::json!({
        "schema": super::output::OUTPUT_SCHEMA,
        "pipeline": pipeline.name,
        "environment": pipeline.environment,
        "services": plans,
        "would_call": would_call.iter().map(|(p, m, u)| serde_json::json!({"plugin": p, "method": m, "url": u})).collect::<Vec<_>>(),
    });
    match args.output {
        super::Format::Json => super::output::print_json(&document),
        super::Format::Text => print!("{}", redactor().redact(&plan_text(&plans, &would_call))),
    }
    if let Some(path) = &args.out {
        std::fs::write(path, super::output::json_text(&document))
            .map_err(|e| CommandError::failure(format!("cannot write {}: {e}", path.display())))?;
    }
    if plans.iter().any(|p| p.error.is_some()) {
        return Err(CommandError::failure("some services could not be planned"));
    }
    Ok(())
}

/// The state of earlier runs, which says which releases were rejected; none where the
/// pipeline has not run (no SQLite file yet: the plan creates none).
async fn earlier_state(scope: &super::Scope) -> Result<Option<crate::state::Store>, CommandError> {
    let location = scope.location();
    if let crate::state::Location::Sqlite(path) = &location
        && !path.exists()
    {
        return Ok(None);
    }
    crate::state::Store::connect(&location)
        .await
        .map(Some)
        .map_err(|e| {
            CommandError::failure(format!(
                "{e} (the plan reads the history of earlier runs there)"
            ))
        })
}

fn plan_text(
    plans: &[crate::run::plan::ServicePlan],
    would_call: &[(String, String, String)],
) -> String {
    let mut text = String::new();
    for p in plans {
        // A resource is named with its kind: `resource reset-quotas (scheduler-job)`.
        let name = match &p.resource {
            Some(kind) => format!("resource {} ({kind})", p.service),
            None => p.service.clone(),
        };
        match (&p.action, &p.error) {
            (_, Some(e)) => text.push_str(&format!("{name}: cannot plan: {e}\n")),
            (Some(action), None) => {
                text.push_str(&format!(
                    "{name}: {action}{}\n",
                    if p.summary.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.summary)
                    }
                ));
                for c in &p.changes {
                    text.push_str(&format!(
                        "    {}: {} → {}\n",
                        c.field,
                        c.before.as_deref().unwrap_or("(none)"),
                        c.after.as_deref().unwrap_or("(removed)")
                    ));
                }
                for (i, step) in p.timeline.iter().enumerate() {
                    text.push_str(&format!("    {}. {step}\n", i + 1));
                }
            }
            (None, None) => {}
        }
    }
    if !would_call.is_empty() {
        text.push_str("blocked by the dry run (a real run would call):\n");
        for (plugin, method, url) in would_call {
            text.push_str(&format!("    {plugin}: {method} {url}\n"));
        }
    }
    text
}
