//! `ktctl render`: a TenantTemplate rendered for one registry row, in dependency order, with the
//! workers' renderer (`engine::render`, `engine::dag`).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use api::TenantTemplate;
use engine::render::{Renderer, Vars};

use crate::input::{InputError, read_documents};
use crate::{EXIT_BAD_INPUT, EXIT_DENIED, EXIT_OK};

/// Output format of `ktctl render`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Multi-document YAML, one document per object, in apply order.
    Yaml,
    /// A JSON array of objects, in apply order.
    Json,
}

/// Arguments of `ktctl render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The row as a JSON object of template variables: `uid` (required), `hostOrUrl`,
    /// `activate` and any extraValueMappings variable, e.g.
    /// `{"uid":"acme","hostOrUrl":"https://acme.example.com","planId":"pro"}`. Numbers and
    /// booleans become their text, null becomes "". Prefix with @ to read it from a file.
    #[arg(long, value_name = "JSON")]
    pub registry_row: String,
    /// File holding the TenantTemplate (the first TenantTemplate document is used).
    #[arg(value_name = "TENANTTEMPLATE-FILE")]
    pub template: PathBuf,
    /// Namespace of the Tenant (default: the TenantTemplate's namespace, else `default`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    pub output: Format,
}

/// Why rendering could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RenderInputError {
    /// The template file is unreadable or malformed.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The row is not a JSON object of variables.
    #[error("--registry-row: {0}")]
    Row(String),
}

/// Why rendering failed for this row (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RenderFailure {
    /// The dependency graph is invalid.
    #[error("TenantTemplate {template}: {source}")]
    Dag {
        /// The template's name.
        template: String,
        /// What is wrong.
        #[source]
        source: engine::dag::DagError,
    },
    /// A resource failed to render.
    #[error("TenantTemplate {template}: {source}")]
    Render {
        /// The template's name.
        template: String,
        /// What failed, naming the resource, field path and template position.
        #[source]
        source: engine::render::RenderError,
    },
}

/// Variables from the `--registry-row` JSON text.
pub fn row_vars(row: &str) -> Result<Vars, RenderInputError> {
    let text = match row.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| RenderInputError::Row(format!("cannot read {path}: {e}")))?,
        None => row.to_string(),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RenderInputError::Row(format!("not valid JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| RenderInputError::Row("must be a JSON object".into()))?;
    let mut strings = HashMap::new();
    for (key, value) in object {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                return Err(RenderInputError::Row(format!(
                    "variable {key} must be a string, number, boolean or null, not {other}"
                )));
            }
        };
        strings.insert(key.clone(), text);
    }
    let uid = strings
        .remove("uid")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| RenderInputError::Row("`uid` is required".into()))?;
    let host_or_url = strings.remove("hostOrUrl").unwrap_or_default();
    let activate = strings.remove("activate").unwrap_or_else(|| "true".into());
    Ok(Vars::tenant(&uid, &host_or_url, &activate).with_extra(strings))
}

/// Renders `template` for `vars`: the objects in apply order, each with its id and level.
pub fn render_template(
    template: &TenantTemplate,
    vars: Vars,
    namespace: &str,
) -> Result<Vec<(String, usize, serde_json::Value)>, RenderFailure> {
    let name = template.metadata.name.clone().unwrap_or_default();
    let vars = vars
        .with_registry_id(template.spec.registry_id.clone())
        .with_template_ref(name.clone());
    let levels =
        engine::dag::levels_of(&template.spec.resources).map_err(|source| RenderFailure::Dag {
            template: name.clone(),
            source,
        })?;
    let by_id: HashMap<&str, &api::TResource> = template
        .spec
        .resources
        .iter()
        .map(|(_, r)| (r.id.as_str(), r))
        .collect();
    let mut renderer = Renderer::new();
    let mut objects = Vec::new();
    for (level, ids) in levels.iter().enumerate() {
        for id in ids {
            let Some(resource) = by_id.get(id.as_str()) else {
                continue;
            };
            let rendered = renderer
                .render_resource(resource, &vars, namespace)
                .map_err(|source| RenderFailure::Render {
                    template: name.clone(),
                    source,
                })?;
            objects.push((rendered.id, level, rendered.object));
        }
    }
    Ok(objects)
}

/// Runs `ktctl render`; returns the exit code.
pub fn run(args: &RenderArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let prepared = (|| -> Result<(TenantTemplate, Vars), RenderInputError> {
        let vars = row_vars(&args.registry_row)?;
        let doc = read_documents(&args.template)?
            .into_iter()
            .find(|d| d.kind() == "TenantTemplate")
            .ok_or_else(|| InputError::Empty {
                path: args.template.clone(),
                expected: "TenantTemplate",
            })?;
        Ok((doc.decode()?, vars))
    })();
    let (template, vars) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let namespace = args
        .namespace
        .clone()
        .or_else(|| template.metadata.namespace.clone())
        .unwrap_or_else(|| "default".to_string());
    let objects = match render_template(&template, vars, &namespace) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_DENIED;
        }
    };
    match args.output {
        Format::Json => {
            let list: Vec<&serde_json::Value> = objects.iter().map(|(_, _, o)| o).collect();
            match serde_json::to_string_pretty(&list) {
                Ok(text) => {
                    let _ = writeln!(out, "{text}");
                }
                Err(e) => {
                    let _ = writeln!(err, "error: encoding JSON: {e}");
                    return EXIT_DENIED;
                }
            }
        }
        Format::Yaml => {
            for (id, level, object) in &objects {
                match serde_yaml::to_string(object) {
                    Ok(text) => {
                        let _ = write!(out, "---\n# resource {id} (level {level})\n{text}");
                    }
                    Err(e) => {
                        let _ = writeln!(err, "error: encoding YAML of {id}: {e}");
                        return EXIT_DENIED;
                    }
                }
            }
        }
    }
    EXIT_OK
}
