//! `ktctl validate`: KubeTemplates against KubeTemplatePolicies, offline, with the webhook's
//! decision procedure (`engine::policy`).

use std::io::Write;
use std::path::PathBuf;

use api::{KubeTemplate, KubeTemplatePolicy};
use engine::policy::{CompiledPolicy, PolicyLookup, Verdict, evaluate};

use crate::input::{Document, InputError, read_documents};
use crate::{EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK};

/// Arguments of `ktctl validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// A file of KubeTemplatePolicies (several YAML documents allowed; other kinds are skipped).
    /// Repeat for several files.
    #[arg(long = "policy", short = 'p', value_name = "FILE", required = true)]
    pub policies: Vec<PathBuf>,
    /// Files of KubeTemplates to evaluate (other kinds are skipped).
    #[arg(value_name = "TEMPLATE-FILE", required = true)]
    pub templates: Vec<PathBuf>,
    /// Count only policies in this namespace, as the webhook does with its operator namespace.
    /// By default every policy given counts.
    #[arg(long, value_name = "NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Namespace of templates without `metadata.namespace` (as `kubectl apply` would default it).
    #[arg(long, default_value = "default")]
    pub namespace: String,
}

/// One evaluated template.
#[derive(Debug)]
pub struct Evaluated {
    /// `namespace/name` of the template.
    pub template: String,
    /// Where it came from (`file#document`).
    pub source: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// Why validation could not be carried out (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// A file is unreadable or malformed.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A policy is invalid (CEL or regex that does not compile, min > max, duplicate rule …).
    #[error("{origin}: KubeTemplatePolicy {policy} is invalid:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    InvalidPolicy {
        /// `file#document`.
        origin: String,
        /// `namespace/name` of the policy.
        policy: String,
        /// Every problem found.
        problems: Vec<String>,
    },
}

const POLICY_KIND: &str = "KubeTemplatePolicy";
const TEMPLATE_KIND: &str = "KubeTemplate";

/// The documents of `kind` in `paths`. Documents of other kinds are skipped, so a file holding
/// namespaces, policies and templates together can be given as both; a file without any is an
/// error.
fn documents_of_kind(paths: &[PathBuf], kind: &'static str) -> Result<Vec<Document>, InputError> {
    let mut selected = Vec::new();
    for path in paths {
        let before = selected.len();
        selected.extend(
            read_documents(path)?
                .into_iter()
                .filter(|d| d.kind() == kind),
        );
        let found = selected.len() > before;
        if !found {
            return Err(InputError::Empty {
                path: path.clone(),
                expected: kind,
            });
        }
    }
    Ok(selected)
}

fn source_of(doc: &Document) -> String {
    format!("{}#{}", doc.path.display(), doc.index)
}

/// Reads the files and evaluates every template. `Err` means exit code 2.
pub fn evaluate_files(
    args: &ValidateArgs,
    notes: &mut Vec<String>,
) -> Result<Vec<Evaluated>, ValidateError> {
    let mut policies = Vec::new();
    for doc in documents_of_kind(&args.policies, POLICY_KIND)? {
        let policy: KubeTemplatePolicy = doc.decode()?;
        let namespace = policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone());
        let name = policy.metadata.name.clone().unwrap_or_default();
        if args
            .operator_namespace
            .as_ref()
            .is_some_and(|ns| *ns != namespace)
        {
            notes.push(format!(
                "note: {}: policy {namespace}/{name} is outside the operator namespace; not counted",
                source_of(&doc)
            ));
            continue;
        }
        let compiled = CompiledPolicy::compile(&policy);
        if !compiled.problems().is_empty() {
            return Err(ValidateError::InvalidPolicy {
                origin: source_of(&doc),
                policy: format!("{namespace}/{name}"),
                problems: compiled
                    .problems()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            });
        }
        policies.push(compiled);
    }
    let mut results = Vec::new();
    for doc in documents_of_kind(&args.templates, TEMPLATE_KIND)? {
        let template: KubeTemplate = doc.decode()?;
        let namespace = template
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| args.namespace.clone());
        let name = template.metadata.name.clone().unwrap_or_default();
        let lookup = PolicyLookup::among(&namespace, policies.iter());
        let verdict = evaluate(&namespace, &template.spec.templates, lookup);
        results.push(Evaluated {
            template: format!("{namespace}/{name}"),
            source: source_of(&doc),
            verdict,
        });
    }
    Ok(results)
}

/// Runs `ktctl validate`; returns the exit code.
pub fn run(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut notes = Vec::new();
    let result = evaluate_files(args, &mut notes);
    for note in &notes {
        let _ = writeln!(err, "{note}");
    }
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let mut code = EXIT_OK;
    for r in &results {
        for w in &r.verdict.warnings {
            let _ = writeln!(err, "warning: {}: {w}", r.template);
        }
        if r.verdict.allowed {
            let _ = writeln!(out, "{}: admitted", r.template);
        } else {
            code = EXIT_DENIED;
            let n = r.verdict.violations.len();
            let _ = writeln!(
                out,
                "{}: denied ({n} violation{})",
                r.template,
                if n == 1 { "" } else { "s" }
            );
            for v in &r.verdict.violations {
                let _ = writeln!(out, "  - {}", v.message);
            }
        }
    }
    code
}
