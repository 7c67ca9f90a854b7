//! Variables and `${name}` interpolation.
//!
//! A pipeline's variables come from four places, each over the one before: `[variables]`, the
//! chosen environment's `[environments.NAME.variables]`, `ENGINE_VAR_NAME` in the process
//! environment, and `--var NAME=VALUE` on the command line. A value from the file may use other
//! variables (`registry = "gcr.io/${project}"`); a value from outside the file is taken as
//! written.
//!
//! Resolution is iterative and linear in the number of references (a topological order by
//! Kahn's algorithm, then one expansion per variable), and every expanded value is capped, so no
//! pipeline, however hostile, can exhaust the stack, the memory or the time of the engine.

use super::diagnostic::{Diagnostic, nearest};
use super::references::{Reference, is_reference};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

/// The most bytes one value may hold once its variables are expanded.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;
/// The most bytes all the expansions of one pipeline may produce together.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;

/// Where a variable's value was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Given {
    /// In the file, at this span (of the value).
    File(Range<usize>),
    /// `ENGINE_VAR_NAME` in the environment.
    ProcessEnv,
    /// `--var NAME=VALUE`.
    CommandLine,
}

/// A variable as given, before its references are expanded.
#[derive(Debug, Clone)]
pub struct Raw {
    pub name: String,
    pub text: String,
    pub given: Given,
}

impl Raw {
    fn span(&self) -> Range<usize> {
        match &self.given {
            Given::File(span) => span.clone(),
            Given::ProcessEnv | Given::CommandLine => 0..0,
        }
    }

    /// Values from outside the file are literal: `${` in a CI variable is not a reference.
    fn literal(&self) -> bool {
        !matches!(self.given, Given::File(_))
    }
}

/// A part of a string that may hold `${name}` references.
#[derive(Debug, PartialEq)]
pub enum Piece<'a> {
    /// Text as it stands (`$${` gives a literal `${`, a lone `$` stays).
    Text(&'a str),
    /// `${name}`.
    Var(&'a str),
    /// `${` without its `}`: the rest of the string.
    Unclosed,
}

/// Splits a string into literal text and `${name}` references, the one reading both
/// interpolation and the ordering of variables that use each other rely on.
pub fn pieces(text: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push(Piece::Text(&rest[..pos]));
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push(Piece::Text("${"));
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                out.push(Piece::Unclosed);
                return out;
            };
            out.push(Piece::Var(&inner[..end]));
            rest = &inner[end + 1..];
        } else {
            out.push(Piece::Text("$"));
            rest = after;
        }
    }
    out.push(Piece::Text(rest));
    out
}

/// Resolved variables, and what is left of the pipeline's expansion budget.
#[derive(Debug)]
pub struct Variables {
    values: BTreeMap<String, String>,
    /// Variables whose value could not be resolved (already reported): a use of one is not
    /// reported again.
    failed: BTreeSet<String>,
    /// Every variable given, resolved or not: the names an error may suggest.
    declared: BTreeSet<String>,
    budget: usize,
}

impl Default for Variables {
    fn default() -> Self {
        Variables {
            values: BTreeMap::new(),
            failed: BTreeSet::new(),
            declared: BTreeSet::new(),
            budget: MAX_TOTAL_BYTES,
        }
    }
}

/// Why a value could not be expanded: a new problem, or one reported already (it uses a
/// variable that failed).
pub type ExpandError = Option<Diagnostic>;

impl Variables {
    /// Resolves every variable (the last given of each name wins); problems come back as
    /// diagnostics, and the variables that could be resolved are kept so the rest of the file
    /// can still be checked.
    pub fn resolve(given: Vec<Raw>) -> (Variables, Vec<Diagnostic>) {
        let mut raw: BTreeMap<String, Raw> = BTreeMap::new();
        for r in given {
            raw.insert(r.name.clone(), r);
        }
        let mut vars = Variables {
            declared: raw.keys().cloned().collect(),
            ..Variables::default()
        };
        let mut problems = Vec::new();
        let (order, cycle) = order(&raw);
        // The variables on (or behind) a cycle are reported once, as the cycle.
        let ordered: BTreeSet<&String> = order.iter().collect();
        vars.failed = vars
            .declared
            .iter()
            .filter(|n| !ordered.contains(n))
            .cloned()
            .collect();
        if let Some(cycle) = cycle {
            let span = raw[&cycle[0]].span();
            problems.push(
                Diagnostic::new(
                    format!(
                        "variables refer to each other in a cycle: {}",
                        cycle.join(" → ")
                    ),
                    span,
                )
                .help("give one of them a value that does not use the others"),
            );
        }
        for name in order {
            let r = &raw[&name];
            let what = format!("variable `{name}`");
            let value = if r.literal() {
                vars.charge(&what, r.text.len(), r.span())
                    .map(|()| r.text.clone())
                    .map_err(Some)
            } else {
                vars.expand(&r.text, r.span(), &what).map(Cow::into_owned)
            };
            match value {
                Ok(value) => {
                    vars.values.insert(name, value);
                }
                Err(problem) => {
                    problems.extend(problem);
                    vars.failed.insert(name);
                }
            }
        }
        (vars, problems)
    }

    /// Expands the `${name}` references of `text` (found at `span`, described as `what` in
    /// errors); text without any comes back as it is, not copied.
    pub fn expand<'t>(
        &mut self,
        text: &'t str,
        span: Range<usize>,
        what: &str,
    ) -> Result<Cow<'t, str>, ExpandError> {
        if !text.contains('$') {
            return Ok(Cow::Borrowed(text));
        }
        let pieces = pieces(text);
        // A reference (`${services.api.url}`) is filled in at run time, so it stays as
        // written; a literal `${` beside one stays escaped, to be read the same way then.
        let keeps_references = pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(n) if is_reference(n)));
        let mut out = String::new();
        for piece in pieces {
            let kept;
            let part = match piece {
                Piece::Text("${") if keeps_references => "$${",
                Piece::Text(t) => t,
                Piece::Var(name) if is_reference(name) => match Reference::parse(name) {
                    Some(Ok(_)) => {
                        kept = format!("${{{name}}}");
                        kept.as_str()
                    }
                    Some(Err(wrong)) => {
                        return Err(Some(Diagnostic::new(wrong, span)));
                    }
                    None => unreachable!("is_reference said it is one"),
                },
                Piece::Var(name) => match self.values.get(name) {
                    Some(value) => value.as_str(),
                    None if self.failed.contains(name) => return Err(None),
                    None => return Err(Some(self.undefined(name, span))),
                },
                Piece::Unclosed => {
                    return Err(Some(
                        Diagnostic::new("unclosed `${` in a string", span)
                            .help("write `${name}`, or `$${` for a literal `${`"),
                    ));
                }
            };
            if out.len() + part.len() > MAX_VALUE_BYTES {
                return Err(Some(too_long(what, span)));
            }
            out.push_str(part);
        }
        self.charge(what, out.len(), span).map_err(Some)?;
        Ok(Cow::Owned(out))
    }

    /// Takes `bytes` from the pipeline's budget.
    fn charge(&mut self, what: &str, bytes: usize, span: Range<usize>) -> Result<(), Diagnostic> {
        if bytes > MAX_VALUE_BYTES {
            return Err(too_long(what, span));
        }
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(Diagnostic::new(
                format!(
                    "{what}: the pipeline's variables expand to more than {} MiB in all",
                    MAX_TOTAL_BYTES >> 20
                ),
                span,
            )
            .help("a value used in many places should be short; keep large data in files")),
        }
    }

    fn undefined(&self, name: &str, span: Range<usize>) -> Diagnostic {
        let help = match nearest(name, self.declared.iter().map(String::as_str)) {
            Some(n) => format!("did you mean `${{{n}}}`?"),
            None if self.declared.is_empty() => {
                "define it under [variables] or [environments.NAME.variables]".into()
            }
            None => format!("defined variables: {}", self.names().join(", ")),
        };
        Diagnostic::new(format!("undefined variable `{name}`"), span).help(help)
    }

    fn names(&self) -> Vec<&str> {
        self.declared.iter().map(String::as_str).collect()
    }
}

fn too_long(what: &str, span: Range<usize>) -> Diagnostic {
    Diagnostic::new(
        format!(
            "{what} expands to more than {} KiB",
            MAX_VALUE_BYTES >> 10
        ),
        span,
    )
    .help("variables that use each other several times grow quickly; check for a value that repeats another")
}

/// The variables in an order where each comes after the ones it uses, and a cycle if there is
/// one (the variables on it are left out of the order).
fn order(raw: &BTreeMap<String, Raw>) -> (Vec<String>, Option<Vec<String>>) {
    let names: Vec<&str> = raw.keys().map(String::as_str).collect();
    let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    // uses[i]: the variables i refers to; users[j]: the variables that refer to j.
    let mut uses: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (i, r) in raw.values().enumerate() {
        if r.literal() {
            continue;
        }
        for piece in pieces(&r.text) {
            if let Piece::Var(name) = piece
                && let Some(&j) = index.get(name)
            {
                uses[i].push(j);
                users[j].push(i);
            }
        }
    }
    let mut waiting: Vec<usize> = uses.iter().map(Vec::len).collect();
    let mut ready: VecDeque<usize> = (0..names.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(names.len());
    while let Some(i) = ready.pop_front() {
        order.push(names[i].to_string());
        for &user in &users[i] {
            waiting[user] -= 1;
            if waiting[user] == 0 {
                ready.push_back(user);
            }
        }
    }
    let cycle = (0..names.len())
        .find(|&i| waiting[i] > 0)
        .map(|start| find_cycle(start, &uses, &waiting, &names));
    (order, cycle)
}

/// Walks from a variable left unordered along references to other unordered ones until one
/// repeats: every such variable uses at least one other, so the walk always closes a cycle.
fn find_cycle(start: usize, uses: &[Vec<usize>], waiting: &[usize], names: &[&str]) -> Vec<String> {
    let mut seen_at: BTreeMap<usize, usize> = BTreeMap::new();
    let mut path = Vec::new();
    let mut at = start;
    while !seen_at.contains_key(&at) {
        seen_at.insert(at, path.len());
        path.push(at);
        at = *uses[at]
            .iter()
            .find(|&&j| waiting[j] > 0)
            .expect("an unordered variable uses another unordered one");
    }
    let mut cycle: Vec<String> = path[seen_at[&at]..]
        .iter()
        .map(|&i| names[i].to_string())
        .collect();
    cycle.push(names[at].to_string());
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> Raw {
        Raw {
            name: name.into(),
            text: text.into(),
            given: Given::File(0..0),
        }
    }

    #[test]
    fn variables_use_each_other_in_any_order() {
        let (vars, problems) = Variables::resolve(vec![
            file("image", "${registry}/api:${tag}"),
            file("registry", "gcr.io/${project}"),
            file("project", "shop"),
            file("tag", "v1"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(vars.values["image"], "gcr.io/shop/api:v1");
    }

    #[test]
    fn values_from_outside_the_file_are_literal_and_win() {
        let (vars, problems) = Variables::resolve(vec![
            file("tag", "latest"),
            file("image", "api:${tag}"),
            Raw {
                name: "tag".into(),
                text: "${not-a-ref}".into(),
                given: Given::CommandLine,
            },
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(vars.values["image"], "api:${not-a-ref}");
    }

    #[test]
    fn a_cycle_is_named() {
        let (_, problems) = Variables::resolve(vec![
            file("a", "${b}"),
            file("b", "${c}"),
            file("c", "${a}"),
            file("d", "fine"),
        ]);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("a → b → c → a"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn a_long_chain_resolves_without_recursion() {
        let n = 200_000;
        let mut given: Vec<Raw> = (1..n)
            .map(|i| file(&format!("v{i}"), &format!("${{v{}}}", i - 1)))
            .collect();
        given.push(file("v0", "end"));
        let (vars, problems) = Variables::resolve(given);
        assert!(problems.is_empty());
        assert_eq!(vars.values[&format!("v{}", n - 1)], "end");
    }

    #[test]
    fn doubling_values_are_stopped_at_the_cap() {
        let mut given = vec![file("v0", "xxxxxxxx")];
        for i in 1..64 {
            given.push(file(
                &format!("v{i}"),
                &format!("${{v{0}}}${{v{0}}}", i - 1),
            ));
        }
        let (_, problems) = Variables::resolve(given);
        // One problem, naming the first variable over the cap; those that use it are not
        // reported again.
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].message,
            "variable `v16` expands to more than 256 KiB"
        );
    }

    #[test]
    fn references_to_services_and_resources_are_kept_for_the_run() {
        let (mut vars, _) = Variables::resolve(vec![file("path", "/reset")]);
        let kept = vars
            .expand("${services.api.url}${path} $${x}", 0..0, "this value")
            .unwrap();
        assert_eq!(kept, "${services.api.url}/reset $${x}");
        let wrong = vars.expand("${services.api.uri}", 0..0, "this value");
        assert!(
            wrong
                .unwrap_err()
                .unwrap()
                .message
                .contains("${services.api.url}")
        );
    }

    #[test]
    fn an_undefined_reference_suggests_a_name() {
        let (_, problems) = Variables::resolve(vec![file("project", "x"), file("a", "${projet}")]);
        assert_eq!(problems[0].message, "undefined variable `projet`");
        assert_eq!(
            problems[0].help.as_deref(),
            Some("did you mean `${project}`?")
        );
    }
}
