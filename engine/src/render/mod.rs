//! Go `text/template` rendering of tenant resources, with a small Go-template engine of our
//! own (lexer, parser, executor in this module; see `docs/adr/0005-go-templates.md`).
//!
//! # Templates
//!
//! Go's syntax: `{{ pipeline }}`, `|` pipelines, parenthesised calls, `.a.b` fields, `$x :=`
//! and `$x =` variables, `$`, `if`/`else if`/`else`, `range` (lists, maps in key order,
//! integers; `$i, $v :=`; `else`; `break`/`continue`), `with`/`else with`, comments, and
//! `{{-`/`-}}` trimming, with Go's literals and escapes. `define`, `template` and `block` are
//! refused (a tenant template is one string). Errors carry `line:column`.
//!
//! # Variables
//!
//! [`Vars`] holds the variables, all strings: `.uid`, `.hostOrUrl` (the uid when the row has
//! none), `.host` (= [`to_host`] of hostOrUrl), `.activate`, `.registryId`, `.templateRef` and
//! every `extraValueMappings` key (extras may shadow the built-ins, as in the original). Using
//! a variable that is not defined is an **error** naming it and the defined ones; the original
//! printed `<no value>`. `{{ index . "plan-id" }}` reaches names that are not identifiers.
//!
//! # Functions
//!
//! Go's builtins (`and or not eq ne lt le gt ge len index print println printf urlquery`, `and`
//! and `or` short-circuiting) and `default trunc trunc63 upper lower trim trimPrefix trimSuffix
//! replace quote squote b64enc b64dec sha1sum sha256sum toHost fromJson toJson ternary list
//! join add sub mul div mod max min contains hasPrefix hasSuffix int float bool`, with Sprig's
//! argument order (the piped value comes last: `{{ .uid | trunc 8 }}`) and semantics.
//! Deliberate differences: `b64dec` of invalid input is an error (Sprig returns Go's error
//! text as the value); `index` of a missing map key is an error; `trunc`/`trunc63` never split
//! a UTF-8 character; `printf`'s `%d` accepts numeric text. An unknown function is a parse
//! error.
//!
//! # Typed values
//!
//! A string inside an object or array ([`render_value`], [`render_resource`]'s `spec`) that
//! is, once trim markers are applied, **exactly one action** — no text before or after it —
//! that declares no variable and whose pipeline's **last command calls `int`, `float` or
//! `bool`** (`"{{ .replicas | int }}"`, `"{{ int .replicas }}"`,
//! `"{{ .ha | default \"false\" | bool }}"`) becomes a JSON integer, number or boolean instead of
//! a string. If the output cannot be read back as that type (a float that is NaN or infinite)
//! it stays a string. [`render_str`] and the name, namespace, label and annotation templates
//! always yield strings.
//!
//! # Resources
//!
//! [`render_resource`] renders every string of `spec` (nested maps and arrays, arrays of arrays
//! included; keys are not rendered), then sets `metadata.name` from `nameTemplate` (when set),
//! `metadata.namespace` from `targetNamespace` (templatable; empty or unset = the Tenant's
//! namespace; not written for kind `Namespace`), and MERGES the rendered `labelsTemplate` /
//! `annotationsTemplate` into `metadata.labels` / `metadata.annotations` (the template's value
//! wins for a key in both). The original replaced those maps, losing the manifest's own labels
//! and annotations; we keep them.
//!
//! # Errors and performance
//!
//! A [`RenderError`] names the resource id, the field path (e.g.
//! `spec.spec.template.spec.containers[0].image`, `labelsTemplate["app.kubernetes.io/name"]`),
//! the template text and the position (`line:column`). Strings without `{{` are copied, never
//! parsed. A [`Renderer`] compiles each distinct template text once and keeps it (up to a
//! bound), so one renderer reused across the resources and rows of a template parses every
//! string once; the free functions use a fresh renderer per call. Execution is bounded (one
//! million steps, 1 MiB of output, 64 levels of nesting, 256 KiB of template text).

mod exec;
mod helpers;
mod lex;
mod parse;
mod printf;

pub use helpers::to_host;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;

use api::TResource;
use serde_json::{Map, Value};

use exec::ExecErrorKind;
use parse::{Arg, Node};

/// Result of rendering.
pub type Result<T, E = RenderError> = std::result::Result<T, E>;

/// Longest template text accepted, in bytes.
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// A renderer forgets its compiled templates when it holds more than this many.
const MAX_CACHED_TEMPLATES: usize = 4096;

/// Longest template text quoted in an error message, in characters.
const MAX_QUOTED_TEMPLATE: usize = 120;

// === variables ===

/// Template variables: names to string values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    /// No variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in variables of one tenant row: `uid`, `hostOrUrl` (the uid when
    /// `host_or_url` is empty), `host` (= [`to_host`] of hostOrUrl) and `activate`.
    pub fn tenant(uid: &str, host_or_url: &str, activate: &str) -> Self {
        let host_or_url = if host_or_url.is_empty() {
            uid
        } else {
            host_or_url
        };
        Self::new()
            .with("uid", uid)
            .with("hostOrUrl", host_or_url)
            .with("host", to_host(host_or_url))
            .with("activate", activate)
    }

    /// The sample variables templates are validated with: the four built-ins with sample
    /// values (`uid` = `test-uid`, `hostOrUrl` = `https://test.example.com`, `host` =
    /// `test.example.com`, `activate` = `true`), `registryId`, `templateRef`, and each of
    /// `extra_names` with the value `sample`.
    pub fn sample<'a>(extra_names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut vars = Self::tenant("test-uid", "https://test.example.com", "true")
            .with("registryId", "sample-registry")
            .with("templateRef", "sample-template");
        for name in extra_names {
            vars.set(name, "sample");
        }
        vars
    }

    /// Adds or replaces a variable (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(name, value);
        self
    }

    /// Adds or replaces a variable.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.into(), value.into());
        self
    }

    /// Sets `.registryId` (builder style).
    pub fn with_registry_id(self, registry_id: impl Into<String>) -> Self {
        self.with("registryId", registry_id)
    }

    /// Sets `.templateRef` (builder style).
    pub fn with_template_ref(self, template_ref: impl Into<String>) -> Self {
        self.with("templateRef", template_ref)
    }

    /// Adds the extra variables of a row (`extraValueMappings` names to values); they replace
    /// built-ins of the same name, as in the original.
    pub fn with_extra<K, V>(mut self, extra: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        for (name, value) in extra {
            self.set(name, value);
        }
        self
    }

    /// The value of a variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether a variable is defined.
    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Variable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Variables as (name, value), sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn to_value(&self) -> Value {
        Value::Object(
            self.values
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Vars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::new().with_extra(iter)
    }
}

// === errors ===

/// A place in template text, 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// What went wrong with a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The text is not a valid template (syntax, unknown function, undefined `$variable`).
    Parse,
    /// The text uses something refused for safety: `define`/`template`/`block`, nesting
    /// deeper than 64, more than 256 KiB.
    Refused,
    /// The template uses a variable that is not defined.
    MissingVariable {
        /// The variable's name, without the dot.
        name: String,
    },
    /// Execution failed otherwise (a function's error, a missing map key, …).
    Execute,
}

/// A template that failed, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateFailure {
    /// Id of the resource the template belongs to, when rendering a resource.
    pub resource: Option<String>,
    /// Field path of the string (`spec.spec.replicas`, `nameTemplate`, …); empty for
    /// [`render_str`].
    pub path: String,
    /// The template text.
    pub template: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// Line in the template text, when known.
    pub line: Option<usize>,
    /// Column in that line, when known.
    pub column: Option<usize>,
    /// The error message.
    pub message: String,
}

impl TemplateFailure {
    /// `line:column` when both are known.
    pub fn position(&self) -> Option<Position> {
        Some(Position {
            line: self.line?,
            column: self.column?,
        })
    }
}

impl fmt::Display for TemplateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = &self.resource {
            write!(f, "resource {id:?}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "template {:?}", quoted_excerpt(&self.template))?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " at {line}:{column}")?,
            (Some(line), None) => write!(f, " at line {line}")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

fn quoted_excerpt(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_TEMPLATE {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX_QUOTED_TEMPLATE - 3).collect();
        format!("{cut}...")
    }
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A template failed to parse or execute.
    #[error("{0}")]
    Template(Box<TemplateFailure>),
    /// The rendered resource is not a usable object.
    #[error("resource {id:?}: {message}")]
    InvalidResource {
        /// Id of the resource.
        id: String,
        /// What is wrong.
        message: String,
    },
}

impl RenderError {
    /// Id of the resource that failed, when rendering a resource.
    pub fn resource(&self) -> Option<&str> {
        match self {
            Self::Template(failure) => failure.resource.as_deref(),
            Self::InvalidResource { id, .. } => Some(id),
        }
    }

    /// The failed template, for template errors.
    pub fn failure(&self) -> Option<&TemplateFailure> {
        match self {
            Self::Template(failure) => Some(failure),
            Self::InvalidResource { .. } => None,
        }
    }

    /// Field path of the failed template, for template errors.
    pub fn path(&self) -> Option<&str> {
        self.failure().map(|f| f.path.as_str())
    }

    /// The undefined variable, when that is the failure.
    pub fn missing_variable(&self) -> Option<&str> {
        match &self.failure()?.kind {
            FailureKind::MissingVariable { name } => Some(name),
            _ => None,
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A failure on its way up, collecting its path (innermost segment first).
#[derive(Debug)]
struct Pending {
    failure: Box<TemplateFailure>,
    segments: Vec<Segment>,
}

impl Pending {
    fn new(failure: Box<TemplateFailure>) -> Self {
        Self {
            failure,
            segments: Vec::new(),
        }
    }

    fn within(mut self, segment: Segment) -> Self {
        self.segments.push(segment);
        self
    }

    fn finish(mut self, resource: Option<&str>, prefix: &str) -> RenderError {
        let mut path = prefix.to_owned();
        for segment in self.segments.iter().rev() {
            push_segment(&mut path, segment);
        }
        self.failure.resource = resource.map(str::to_owned);
        self.failure.path = path;
        RenderError::Template(self.failure)
    }
}

fn push_segment(path: &mut String, segment: &Segment) {
    match segment {
        Segment::Index(i) => {
            let _ = write!(path, "[{i}]");
        }
        Segment::Key(key)
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key);
        }
        Segment::Key(key) => {
            let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"));
            let _ = write!(path, "[{quoted}]");
        }
    }
}

fn key_path(field: &str, key: &str) -> String {
    let mut path = field.to_owned();
    push_segment(&mut path, &Segment::Key(key.to_owned()));
    path
}

// === compiled templates ===

/// Which typed JSON value a whole-value template yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typed {
    Int,
    Float,
    Bool,
}

/// A template text, compiled once.
struct Compiled {
    program: std::result::Result<Vec<Node>, Box<TemplateFailure>>,
    typed: Option<Typed>,
}

/// 1-based line and column (in characters) of a byte offset.
fn position_at(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Position { line, column }
}

fn failure(
    text: &str,
    kind: FailureKind,
    position: Option<Position>,
    message: String,
) -> Box<TemplateFailure> {
    Box::new(TemplateFailure {
        resource: None,
        path: String::new(),
        template: text.to_owned(),
        kind,
        line: position.map(|p| p.line),
        column: position.map(|p| p.column),
        message,
    })
}

fn compile(text: &str) -> Compiled {
    if text.len() > MAX_TEMPLATE_BYTES {
        let message = format!(
            "template is {} bytes long, more than the {MAX_TEMPLATE_BYTES} allowed",
            text.len()
        );
        return Compiled {
            program: Err(failure(text, FailureKind::Refused, None, message)),
            typed: None,
        };
    }
    match parse::parse(text) {
        Ok(nodes) => Compiled {
            typed: typed_kind(&nodes),
            program: Ok(nodes),
        },
        Err(error) => {
            let kind = if error.message.contains("not supported") {
                FailureKind::Refused
            } else {
                FailureKind::Parse
            };
            Compiled {
                program: Err(failure(
                    text,
                    kind,
                    Some(position_at(text, error.pos)),
                    error.message,
                )),
                typed: None,
            }
        }
    }
}

/// The typed whole-value rule on the parsed template: exactly one action (after trim
/// markers, no text around it), declaring no variable, whose last command calls `int`,
/// `float` or `bool`.
fn typed_kind(nodes: &[Node]) -> Option<Typed> {
    let [Node::Action(pipe)] = nodes else {
        return None;
    };
    if !pipe.vars.is_empty() {
        return None;
    }
    match pipe.cmds.last()?.args.first()? {
        Arg::Func { name, .. } => match name.as_str() {
            n if n == helpers::TYPED_FUNCS[0] => Some(Typed::Int),
            n if n == helpers::TYPED_FUNCS[1] => Some(Typed::Float),
            n if n == helpers::TYPED_FUNCS[2] => Some(Typed::Bool),
            _ => None,
        },
        _ => None,
    }
}

/// The variables of one rendering call, as the template's `.`.
struct Scope<'v> {
    root: Value,
    vars: &'v Vars,
}

impl<'v> Scope<'v> {
    fn new(vars: &'v Vars) -> Self {
        Self {
            root: vars.to_value(),
            vars,
        }
    }
}

fn exec_failure(text: &str, error: exec::ExecError, scope: &Scope<'_>) -> Box<TemplateFailure> {
    let position = Some(position_at(text, error.pos));
    match error.kind {
        ExecErrorKind::MissingVariable(name) => {
            let defined: Vec<&str> = scope.vars.names().collect();
            let message = format!(
                "undefined variable .{name} (defined: {})",
                if defined.is_empty() {
                    "none".to_owned()
                } else {
                    defined.join(", ")
                }
            );
            failure(
                text,
                FailureKind::MissingVariable { name },
                position,
                message,
            )
        }
        ExecErrorKind::Other(message) => failure(text, FailureKind::Execute, position, message),
    }
}

fn typed_value(output: String, typed: Option<Typed>) -> Value {
    match typed {
        Some(Typed::Int) => match output.trim().parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => Value::String(output),
        },
        Some(Typed::Float) => match output
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            Some(n) => Value::Number(n),
            None => Value::String(output),
        },
        Some(Typed::Bool) => match output.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(output),
        },
        None => Value::String(output),
    }
}

// === rendering ===

/// A rendered tenant resource, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedResource {
    /// The resource's id in the template.
    pub id: String,
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `kind` of the object.
    pub kind: String,
    /// `metadata.name` of the object.
    pub name: String,
    /// Namespace the object goes to: the rendered `targetNamespace`, else the Tenant's
    /// namespace. Also written to `metadata.namespace`, except for kind `Namespace`.
    pub namespace: String,
    /// The whole rendered object.
    pub object: Value,
}

/// Renders templates, compiling each distinct template text once and keeping it for later
/// calls (up to 4096 texts, then it starts over). Reuse one renderer for all resources and
/// rows of a template.
#[derive(Default)]
pub struct Renderer {
    cache: HashMap<String, Arc<Compiled>>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("cached_templates", &self.cache.len())
            .finish()
    }
}

impl Renderer {
    /// A renderer with nothing compiled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of compiled template texts kept.
    pub fn cached_templates(&self) -> usize {
        self.cache.len()
    }

    fn compiled(&mut self, text: &str) -> Arc<Compiled> {
        if let Some(compiled) = self.cache.get(text) {
            return Arc::clone(compiled);
        }
        if self.cache.len() >= MAX_CACHED_TEMPLATES {
            self.cache.clear();
        }
        let compiled = Arc::new(compile(text));
        self.cache.insert(text.to_owned(), Arc::clone(&compiled));
        compiled
    }

    /// Renders one template text; texts without `{{` come back unchanged.
    fn execute(
        &mut self,
        text: &str,
        scope: &Scope<'_>,
    ) -> std::result::Result<(String, Option<Typed>), Box<TemplateFailure>> {
        if !text.contains("{{") {
            return Ok((text.to_owned(), None));
        }
        let compiled = self.compiled(text);
        let nodes = compiled.program.as_ref().map_err(Clone::clone)?;
        match exec::execute(nodes, &scope.root) {
            Ok(output) => Ok((output, compiled.typed)),
            Err(error) => Err(exec_failure(text, error, scope)),
        }
    }

    /// Checks that a template text parses (and passes the safety limits), without running it.
    pub fn check_syntax(&mut self, text: &str) -> Result<()> {
        if !text.contains("{{") {
            return Ok(());
        }
        match &self.compiled(text).program {
            Ok(_) => Ok(()),
            Err(f) => Err(RenderError::Template(f.clone())),
        }
    }

    /// Renders a template text to a string.
    pub fn render_str(&mut self, text: &str, vars: &Vars) -> Result<String> {
        let scope = Scope::new(vars);
        self.execute(text, &scope)
            .map(|(output, _)| output)
            .map_err(|f| Pending::new(f).finish(None, ""))
    }

    /// Renders every string inside a JSON value (object keys are not rendered), applying the
    /// typed whole-value rule.
    pub fn render_value(&mut self, value: &Value, vars: &Vars) -> Result<Value> {
        let scope = Scope::new(vars);
        let mut rendered = value.clone();
        self.render_tree(&mut rendered, &scope)
            .map_err(|p| p.finish(None, ""))?;
        Ok(rendered)
    }

    fn render_tree(
        &mut self,
        value: &mut Value,
        scope: &Scope<'_>,
    ) -> std::result::Result<(), Pending> {
        match value {
            Value::String(text) => {
                if text.contains("{{") {
                    let (output, typed) = self.execute(text, scope).map_err(Pending::new)?;
                    *value = typed_value(output, typed);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.render_tree(item, scope)
                        .map_err(|p| p.within(Segment::Index(i)))?;
                }
            }
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    self.render_tree(item, scope)
                        .map_err(|p| p.within(Segment::Key(key.clone())))?;
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }

    fn render_field(
        &mut self,
        text: &str,
        scope: &Scope<'_>,
        id: &str,
        path: &str,
    ) -> Result<String> {
        self.execute(text, scope)
            .map(|(output, _)| output)
            .map_err(|f| Pending::new(f).finish(Some(id), path))
    }

    /// Renders a tenant resource into the object to apply (see the module documentation).
    pub fn render_resource(
        &mut self,
        resource: &TResource,
        vars: &Vars,
        default_namespace: &str,
    ) -> Result<RenderedResource> {
        let scope = Scope::new(vars);
        let id = resource.id.as_str();
        let invalid = |message: String| RenderError::InvalidResource {
            id: id.to_owned(),
            message,
        };

        let mut object = Value::Object(resource.spec.clone());
        self.render_tree(&mut object, &scope)
            .map_err(|p| p.finish(Some(id), "spec"))?;

        let name = match resource.name_template.as_deref().filter(|t| !t.is_empty()) {
            Some(template) => Some(self.render_field(template, &scope, id, "nameTemplate")?),
            None => None,
        };
        let namespace = match resource
            .target_namespace
            .as_deref()
            .filter(|t| !t.is_empty())
        {
            Some(template) => self.render_field(template, &scope, id, "targetNamespace")?,
            None => String::new(),
        };
        let namespace = if namespace.is_empty() {
            default_namespace.to_owned()
        } else {
            namespace
        };
        let labels = self.render_map(&resource.labels_template, &scope, id, "labelsTemplate")?;
        let annotations = self.render_map(
            &resource.annotations_template,
            &scope,
            id,
            "annotationsTemplate",
        )?;

        let Value::Object(root) = &mut object else {
            return Err(invalid("spec is not an object".to_owned()));
        };
        let text_field = |root: &Map<String, Value>, field: &str| {
            root.get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("spec.{field} must be a non-empty string")))
        };
        let api_version = text_field(root, "apiVersion")?;
        let kind = text_field(root, "kind")?;

        let metadata = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if metadata.is_null() {
            *metadata = Value::Object(Map::new());
        }
        let Value::Object(metadata) = metadata else {
            return Err(invalid("spec.metadata is not an object".to_owned()));
        };
        if let Some(name) = name {
            metadata.insert("name".to_owned(), Value::String(name));
        }
        if kind != "Namespace" {
            metadata.insert("namespace".to_owned(), Value::String(namespace.clone()));
        }
        merge_strings(metadata, "labels", labels).map_err(&invalid)?;
        merge_strings(metadata, "annotations", annotations).map_err(&invalid)?;
        let name = metadata
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                invalid("has no name: set nameTemplate or spec.metadata.name".to_owned())
            })?;

        Ok(RenderedResource {
            id: id.to_owned(),
            api_version,
            kind,
            name,
            namespace,
            object,
        })
    }

    fn render_map(
        &mut self,
        templates: &BTreeMap<String, String>,
        scope: &Scope<'_>,
        id: &str,
        field: &str,
    ) -> Result<Vec<(String, String)>> {
        templates
            .iter()
            .map(|(key, template)| {
                let value = self.render_field(template, scope, id, &key_path(field, key))?;
                Ok((key.clone(), value))
            })
            .collect()
    }
}

/// Merges rendered key/values into `metadata.<field>` (created when absent).
fn merge_strings(
    metadata: &mut Map<String, Value>,
    field: &str,
    entries: Vec<(String, String)>,
) -> std::result::Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let target = metadata
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if target.is_null() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return Err(format!("spec.metadata.{field} is not an object"));
    };
    for (key, value) in entries {
        target.insert(key, Value::String(value));
    }
    Ok(())
}

/// Renders a template text to a string (with a fresh [`Renderer`]).
pub fn render_str(template_text: &str, vars: &Vars) -> Result<String> {
    Renderer::new().render_str(template_text, vars)
}

/// Renders every string inside a JSON value, applying the typed whole-value rule (with a
/// fresh [`Renderer`]: each distinct template text is compiled once in this call).
pub fn render_value(value: &Value, vars: &Vars) -> Result<Value> {
    Renderer::new().render_value(value, vars)
}

/// Renders a tenant resource into the object to apply (with a fresh [`Renderer`]).
pub fn render_resource(
    resource: &TResource,
    vars: &Vars,
    default_namespace: &str,
) -> Result<RenderedResource> {
    Renderer::new().render_resource(resource, vars, default_namespace)
}
