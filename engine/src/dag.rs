//! Dependency levels of tenant resources, and the checks the TenantTemplate webhook makes.
//!
//! A resource's level is 0 without `dependIds`, else 1 + the highest level among its
//! dependencies. Resources of one level do not depend on each other and may be applied
//! together; levels go in order. Each level is sorted by id, so the plan is deterministic.
//!
//! In messages, `a -> b` means "a depends on b".

use std::collections::HashMap;
use std::fmt;

use api::{TResource, TenantResources, TenantTemplateSpec};
use serde_json::Value;

use crate::render::{FailureKind, RenderError, Renderer, Vars};

/// Result of this module's fallible functions.
pub type Result<T, E = DagError> = std::result::Result<T, E>;

/// Why resources cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// A resource has an empty id.
    #[error("resource number {index} (from 0) has an empty id")]
    EmptyId {
        /// Position of the resource in the order given.
        index: usize,
    },
    /// Two resources share an id.
    #[error("duplicate resource id {id:?}")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },
    /// A resource depends on an id no resource has.
    #[error("resource {id:?} depends on unknown id {missing:?}")]
    UnknownDependency {
        /// The resource with the bad dependency.
        id: String,
        /// The id it names that does not exist.
        missing: String,
    },
    /// Dependencies form a cycle.
    #[error("dependency cycle: {}", .cycle.join(" -> "))]
    Cycle {
        /// The ids around the cycle, starting with the smallest id and ending with it again
        /// (`["a", "b", "a"]`; a self-dependency is `["a", "a"]`).
        cycle: Vec<String>,
    },
}

/// The dependency graph of a list of resources, checked.
struct Graph<'a> {
    ids: Vec<&'a str>,
    /// For each resource, the indexes of its (distinct, known) dependencies.
    deps: Vec<Vec<usize>>,
}

/// Builds the graph and collects every problem: empty ids, duplicate ids (once per id),
/// unknown dependencies, then cycles (each cycle once).
fn analyse<'a>(resources: &[&'a TResource]) -> (Graph<'a>, Vec<(usize, DagError)>) {
    let mut problems = Vec::new();
    let mut index_of: HashMap<&str, usize> = HashMap::with_capacity(resources.len());
    let mut reported_duplicates: Vec<&str> = Vec::new();
    for (i, resource) in resources.iter().enumerate() {
        let id = resource.id.as_str();
        if id.is_empty() {
            problems.push((i, DagError::EmptyId { index: i }));
            continue;
        }
        if index_of.contains_key(id) {
            if !reported_duplicates.contains(&id) {
                reported_duplicates.push(id);
                problems.push((i, DagError::DuplicateId { id: id.to_owned() }));
            }
        } else {
            index_of.insert(id, i);
        }
    }
    let mut deps = vec![Vec::new(); resources.len()];
    for (i, resource) in resources.iter().enumerate() {
        for dep in &resource.depend_ids {
            match index_of.get(dep.as_str()) {
                Some(&d) => {
                    if !deps[i].contains(&d) {
                        deps[i].push(d);
                    }
                }
                None => problems.push((
                    i,
                    DagError::UnknownDependency {
                        id: resource.id.clone(),
                        missing: dep.clone(),
                    },
                )),
            }
        }
    }
    // Duplicates (later occurrences) and empty ids take no part in the graph.
    for (i, resource) in resources.iter().enumerate() {
        if index_of.get(resource.id.as_str()) != Some(&i) {
            deps[i].clear();
        }
    }
    let graph = Graph {
        ids: resources.iter().map(|r| r.id.as_str()).collect(),
        deps,
    };
    for cycle in cycles(&graph) {
        let first = cycle.first().copied().unwrap_or(0);
        let cycle = cycle.iter().map(|&i| graph.ids[i].to_owned()).collect();
        problems.push((first, DagError::Cycle { cycle }));
    }
    (graph, problems)
}

/// Every elementary cycle found by a depth-first search in id order, each as indexes from its
/// smallest id around and back to it. Each back edge gives one cycle, so overlapping cycles
/// may be reported in part only; fixing what is reported reveals the rest.
fn cycles(graph: &Graph<'_>) -> Vec<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n = graph.ids.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| graph.ids[a].cmp(graph.ids[b]));
    let mut mark = vec![Mark::New; n];
    let mut found: Vec<Vec<usize>> = Vec::new();
    for &start in &order {
        if mark[start] != Mark::New {
            continue;
        }
        // (node, next dependency to look at)
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&dep) = graph.deps[node].get(*next) {
                *next += 1;
                match mark[dep] {
                    Mark::New => {
                        mark[dep] = Mark::OnPath;
                        path.push((dep, 0));
                    }
                    Mark::OnPath => {
                        let from = path.iter().position(|&(p, _)| p == dep).unwrap_or(0);
                        let mut cycle: Vec<usize> = path[from..].iter().map(|&(p, _)| p).collect();
                        let smallest = (0..cycle.len())
                            .min_by(|&a, &b| graph.ids[cycle[a]].cmp(graph.ids[cycle[b]]))
                            .unwrap_or(0);
                        cycle.rotate_left(smallest);
                        cycle.push(cycle[0]);
                        if !found.contains(&cycle) {
                            found.push(cycle);
                        }
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                path.pop();
            }
        }
    }
    found
}

fn compute_levels(graph: &Graph<'_>) -> Vec<Vec<String>> {
    let n = graph.ids.len();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut waiting: Vec<usize> = vec![0; n];
    for (i, deps) in graph.deps.iter().enumerate() {
        waiting[i] = deps.len();
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut level = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    while let Some(node) = ready.pop() {
        for &dependent in &dependents[node] {
            level[dependent] = level[dependent].max(level[node] + 1);
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 {
                ready.push(dependent);
            }
        }
    }
    let depth = level.iter().copied().max().map_or(0, |m| m + 1);
    let mut levels: Vec<Vec<String>> = vec![Vec::new(); depth];
    for (i, &l) in level.iter().enumerate() {
        levels[l].push(graph.ids[i].to_owned());
    }
    for ids in &mut levels {
        ids.sort();
    }
    levels
}

/// The dependency levels of resources: `levels[0]` has the ids without dependencies,
/// `levels[k]` those whose deepest dependency is at level k-1; each level sorted by id.
///
/// Fails on the first problem, checked in this order: an empty id, a duplicate id, an unknown
/// `dependIds` entry, a cycle (named in full: `a -> b -> c -> a`).
pub fn levels<'a>(resources: impl IntoIterator<Item = &'a TResource>) -> Result<Vec<Vec<String>>> {
    let resources: Vec<&TResource> = resources.into_iter().collect();
    let (graph, problems) = analyse(&resources);
    if let Some((_, problem)) = problems.into_iter().next() {
        return Err(problem);
    }
    Ok(compute_levels(&graph))
}

/// [`levels`] of all 16 lists of a TenantTemplate or Tenant.
pub fn levels_of(resources: &TenantResources) -> Result<Vec<Vec<String>>> {
    levels(resources.iter().map(|(_, r)| r))
}

// === webhook validation ===

/// What kind of problem a template has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// An id is empty.
    EmptyId,
    /// An id is used twice.
    DuplicateId,
    /// A `dependIds` entry names no resource.
    UnknownDependency,
    /// Dependencies form a cycle.
    Cycle,
    /// A template string does not parse or does not run with sample variables.
    Template,
}

/// One problem of a TenantTemplate, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The resource's id, when it has one.
    pub resource: Option<String>,
    /// Where in the template spec, e.g. `deployments[0].nameTemplate`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Location of every resource of a template: (`list[index]`, resource).
fn located(resources: &TenantResources) -> Vec<(String, &TResource)> {
    resources
        .lists()
        .into_iter()
        .flat_map(|(list, entries)| {
            entries
                .iter()
                .enumerate()
                .map(move |(i, entry)| (format!("{list}[{i}]"), entry))
        })
        .collect()
}

/// The checks of the original validating webhook: ids non-empty and unique, `dependIds`
/// known, no cycle, and `nameTemplate` and every label and annotation template parses and runs
/// with the sample variables of [`Vars::sample`]. The registry's extra variable names are not
/// known here, so a reference to an undefined variable is not reported (the original, which
/// printed `<no value>`, never failed on one either); use [`validate_template_with`] when they
/// are known. An empty result means valid.
pub fn validate_template(spec: &TenantTemplateSpec) -> Vec<TemplateProblem> {
    validate(spec, None)
}

/// [`validate_template`] with the registry's extra variable names known: then a template
/// using any other undefined variable is a problem too.
pub fn validate_template_with(
    spec: &TenantTemplateSpec,
    extra_variables: &[&str],
) -> Vec<TemplateProblem> {
    validate(spec, Some(extra_variables))
}

fn validate(spec: &TenantTemplateSpec, extra: Option<&[&str]>) -> Vec<TemplateProblem> {
    let located = located(&spec.resources);
    let resources: Vec<&TResource> = located.iter().map(|(_, r)| *r).collect();
    let (_, dag_problems) = analyse(&resources);
    let mut problems: Vec<TemplateProblem> = dag_problems
        .into_iter()
        .map(|(i, problem)| {
            let (kind, field) = match &problem {
                DagError::EmptyId { .. } => (ProblemKind::EmptyId, "id"),
                DagError::DuplicateId { .. } => (ProblemKind::DuplicateId, "id"),
                DagError::UnknownDependency { .. } => (ProblemKind::UnknownDependency, "dependIds"),
                DagError::Cycle { .. } => (ProblemKind::Cycle, "dependIds"),
            };
            let resource = &resources[i].id;
            TemplateProblem {
                kind,
                resource: (!resource.is_empty()).then(|| resource.clone()),
                field: format!("{}.{field}", located[i].0),
                message: problem.to_string(),
            }
        })
        .collect();

    let vars = Vars::sample(extra.unwrap_or_default().iter().copied());
    let mut renderer = Renderer::new();
    for (location, resource) in &located {
        let mut templates: Vec<(String, &str)> = Vec::new();
        if let Some(name) = &resource.name_template {
            templates.push((format!("{location}.nameTemplate"), name));
        }
        for (field, map) in [
            ("labelsTemplate", &resource.labels_template),
            ("annotationsTemplate", &resource.annotations_template),
        ] {
            for (key, template) in map {
                let mut path = format!("{location}.{field}");
                push_key(&mut path, key);
                templates.push((path, template));
            }
        }
        for (field, template) in templates {
            let Err(error) = renderer.render_str(template, &vars) else {
                continue;
            };
            let unknown_extra = extra.is_none()
                && matches!(
                    error.failure().map(|f| &f.kind),
                    Some(FailureKind::MissingVariable { .. })
                );
            if !unknown_extra {
                problems.push(template_problem(resource, field, &error));
            }
        }
    }
    problems
}

fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        path.push('.');
        path.push_str(key);
    } else {
        let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"));
        path.push('[');
        path.push_str(&quoted);
        path.push(']');
    }
}

fn template_problem(resource: &TResource, field: String, error: &RenderError) -> TemplateProblem {
    let message = match error.failure() {
        Some(failure) => {
            let mut bare = failure.clone();
            bare.resource = None;
            bare.path = String::new();
            bare.to_string()
        }
        None => error.to_string(),
    };
    TemplateProblem {
        kind: ProblemKind::Template,
        resource: (!resource.id.is_empty()).then(|| resource.id.clone()),
        field,
        message,
    }
}

/// Syntax check of every other template string of a TenantTemplate: all strings in each
/// resource's `spec` and its `targetNamespace`. The original webhook does not check these
/// (they were rendered, and a failing one silently kept its raw text), so the webhook should
/// report these as warnings, not deny: existing manifests may hold `{{` text that is not a Go
/// template.
pub fn check_spec_templates(spec: &TenantTemplateSpec) -> Vec<TemplateProblem> {
    let mut renderer = Renderer::new();
    let mut problems = Vec::new();
    for (location, resource) in located(&spec.resources) {
        if let Some(namespace) = &resource.target_namespace
            && let Err(error) = renderer.check_syntax(namespace)
        {
            problems.push(template_problem(
                resource,
                format!("{location}.targetNamespace"),
                &error,
            ));
        }
        let mut path = format!("{location}.spec");
        for (key, value) in &resource.spec {
            let len = path.len();
            push_key(&mut path, key);
            check_strings(&mut renderer, resource, value, &mut path, &mut problems);
            path.truncate(len);
        }
    }
    problems
}

fn check_strings(
    renderer: &mut Renderer,
    resource: &TResource,
    value: &Value,
    path: &mut String,
    problems: &mut Vec<TemplateProblem>,
) {
    match value {
        Value::String(text) => {
            if let Err(error) = renderer.check_syntax(text) {
                problems.push(template_problem(resource, path.clone(), &error));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                check_strings(renderer, resource, item, path, problems);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                push_key(path, key);
                check_strings(renderer, resource, item, path, problems);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}
