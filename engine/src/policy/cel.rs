//! CEL programs of a policy: parse once, check the references as cel-go's checker would, evaluate
//! against an object with a cost bound (see `cost.rs` and docs/adr/0004-cel-cost-limit.md).
//!
//! The environment is the `cel` crate's standard library and macros plus every extension function
//! of `kube-cel` (a superset of the original's bare cel-go environment). The crate is used through
//! `kube_cel::cel`, so both always agree on the `cel` version.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

use kube_cel::KubeCelExt;
use kube_cel::cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use kube_cel::cel::objects::{Key, Map as CelMap};
use kube_cel::cel::{Context, ExecutionError, Program, Value as CelValue};
use serde_json::{Map, Value};

use super::cost::{self, Binding, SizeMemo};
use super::fields::{JRef, Root};
use crate::gojson::{GoNumber, go_number};

/// Longest CEL source accepted, in bytes.
pub(crate) const MAX_SOURCE_BYTES: usize = 32 * 1024;
/// Deepest nesting accepted (cel-go's parser stops at 250 as well).
pub(crate) const MAX_NESTING: usize = 250;
/// Programs whose syntax tree is at most this deep run on the caller's stack; deeper ones on a
/// thread of their own with [`BIG_STACK`], so no expression can overflow a small thread stack.
const INLINE_DEPTH: usize = 16;
/// Stack for parsing and for deep programs (reserved, committed only as used).
const BIG_STACK: usize = 256 << 20;
/// Deepest JSON nesting converted into CEL values; deeper parts become null.
const MAX_JSON_DEPTH: usize = 512;

/// The text cel-go gives when a program exceeds its cost limit.
pub(crate) const COST_EXCEEDED: &str = "operation cancelled: actual cost limit exceeded";

/// Shared root environment: building it registers a few hundred functions, so it is built once.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(|| Context::default().with_all());

/// The one variable a program sees, as in the original.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CelVar {
    /// `object`: the whole object (`rule`, or a cel validation with fieldPath "" or `object`).
    Object,
    /// `value`: the field at fieldPath (null when missing).
    Value,
}

impl CelVar {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CelVar::Object => "object",
            CelVar::Value => "value",
        }
    }
}

/// Why a CEL source does not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CelCompileError {
    /// Syntax error (cel-go: "failed to parse CEL rule").
    Parse(String),
    /// Reference or construct the environment does not have (cel-go: "failed to check CEL rule").
    Check(String),
}

impl CelCompileError {
    /// The original's wording after the `template[%d]...: ` prefix.
    pub(crate) fn describe(&self) -> String {
        match self {
            CelCompileError::Parse(e) => format!("failed to parse CEL rule: {e}"),
            CelCompileError::Check(e) => format!("failed to check CEL rule: {e}"),
        }
    }
}

/// A compiled CEL program.
#[derive(Debug)]
pub(crate) struct CelProgram {
    var: CelVar,
    program: Program,
    depth: usize,
    /// For `object` programs: the field paths read from the object (None: the whole object).
    /// Only these parts are converted into CEL values; the rest cannot affect the result.
    paths: Option<Vec<Vec<String>>>,
    /// Estimated cost with the smallest input (empty object, null value).
    base_cost: f64,
}

impl CelProgram {
    /// Parses and checks `source` for the variable `var`.
    pub(crate) fn compile(source: &str, var: CelVar) -> Result<Self, CelCompileError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(CelCompileError::Parse(format!(
                "expression is {} bytes long, more than the maximum of {MAX_SOURCE_BYTES}",
                source.len()
            )));
        }
        let nesting = nesting_estimate(source);
        if nesting > MAX_NESTING {
            return Err(CelCompileError::Parse(format!(
                "expression recursion limit exceeded: more than {MAX_NESTING} nested levels"
            )));
        }
        let program = parse_on_big_stack(source)?;
        let depth = check(program.expression(), var)?;
        let base_cost = cost::estimate(
            program.expression(),
            var,
            Binding::Empty,
            &mut SizeMemo::default(),
        );
        let paths = access_paths(program.expression(), var.name());
        Ok(CelProgram {
            var,
            program,
            depth,
            paths,
            base_cost,
        })
    }

    /// Whether the program reads the whole object (rather than some field paths of it).
    pub(crate) fn reads_whole_object(&self) -> bool {
        self.paths.is_none()
    }

    /// The value to bind to `object`: the parts of the object this program reads.
    pub(crate) fn object_value(&self, root: Root<'_>) -> CelValue {
        match &self.paths {
            None => root_to_cel(root),
            Some(paths) => {
                let suffixes: Vec<&[String]> = paths.iter().map(Vec::as_slice).collect();
                pruned(JRef::Root(root), &suffixes, 0)
            }
        }
    }

    /// Estimated cost for the smallest possible input; above the limit, every evaluation fails.
    pub(crate) fn base_cost(&self) -> f64 {
        self.base_cost
    }

    /// Evaluates against a context that binds the program's variable to the JSON in
    /// `binding`. `Ok(true)` passes, `Ok(false)` is any result but boolean true, `Err` the
    /// evaluation error text.
    pub(crate) fn evaluate(
        &self,
        ctx: &Context<'_>,
        binding: Binding<'_>,
        memo: &mut SizeMemo,
    ) -> Result<bool, String> {
        let estimate = cost::estimate(self.program.expression(), self.var, binding, memo);
        if !cost::within_limit(estimate) {
            return Err(COST_EXCEEDED.to_string());
        }
        let run = || match catch_unwind(AssertUnwindSafe(|| self.program.execute(ctx))) {
            Ok(Ok(value)) => Ok(matches!(value, CelValue::Bool(true))),
            Ok(Err(e)) => Err(describe_error(&e)),
            Err(_) => Err("internal error while evaluating the expression".to_string()),
        };
        if self.depth <= INLINE_DEPTH {
            return run();
        }
        std::thread::scope(|scope| {
            match std::thread::Builder::new()
                .name("cel-deep".into())
                .stack_size(BIG_STACK)
                .spawn_scoped(scope, run)
            {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err("internal error while evaluating".to_string())),
                Err(e) => Err(format!("could not start evaluation thread: {e}")),
            }
        })
    }
}

/// A context binding one variable, on top of the shared root environment.
pub(crate) fn context_with(var: CelVar, value: CelValue) -> Context<'static> {
    let mut ctx = ROOT.new_inner_scope();
    ctx.add_variable_from_value(var.name(), value);
    ctx
}

fn parse_on_big_stack(source: &str) -> Result<Program, CelCompileError> {
    let parse = || match catch_unwind(|| Program::compile(source)) {
        Ok(Ok(program)) => Ok(program),
        Ok(Err(e)) => Err(CelCompileError::Parse(e.to_string())),
        Err(_) => Err(CelCompileError::Parse(
            "the parser failed on this expression".to_string(),
        )),
    };
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(BIG_STACK)
            .spawn_scoped(scope, parse)
        {
            Ok(handle) => handle.join().unwrap_or_else(|_| {
                Err(CelCompileError::Parse(
                    "the parser failed on this expression".to_string(),
                ))
            }),
            Err(e) => Err(CelCompileError::Parse(format!(
                "could not start the parser thread: {e}"
            ))),
        }
    })
}

/// Upper bound on how deeply the parser will recurse for this source: bracket nesting plus, per
/// bracket level, the operators and member accesses that the grammar nests (left-recursive
/// rules). `&&` and `||` chains are flattened by the parser and do not add to it.
fn nesting_estimate(source: &str) -> usize {
    let bytes = source.as_bytes();
    let mut levels: Vec<usize> = vec![0];
    let mut max = 0usize;
    let mut i = 0;
    let current = |levels: &Vec<usize>| levels.iter().map(|c| c + 1).sum::<usize>();
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' => {
                i = skip_string(bytes, i);
                continue;
            }
            b'(' | b'[' | b'{' => levels.push(0),
            b')' | b']' | b'}' if levels.len() > 1 => {
                levels.pop();
            }
            b'&' | b'|' if bytes.get(i + 1) == Some(&b) => {
                if let Some(last) = levels.last_mut() {
                    *last = 0;
                }
                i += 2;
                continue;
            }
            b'.' | b'+' | b'-' | b'*' | b'/' | b'%' | b'=' | b'!' | b'<' | b'>' | b'?' => {
                if let Some(last) = levels.last_mut() {
                    *last += 1;
                }
            }
            _ => {}
        }
        max = max.max(current(&levels));
        if max > MAX_NESTING {
            return max;
        }
        i += 1;
    }
    max
}

/// Index just past the string literal starting at `start` (quote char), handling triple quotes,
/// raw prefixes (`r'..'`, the prefix itself was already passed) and escapes.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let raw = start > 0 && matches!(bytes[start - 1], b'r' | b'R');
    let triple = bytes.get(start + 1) == Some(&quote) && bytes.get(start + 2) == Some(&quote);
    let mut i = if triple { start + 3 } else { start + 1 };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' && !raw {
            i += 2;
            continue;
        }
        if b == quote {
            if !triple {
                return i + 1;
            }
            if bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote) {
                return i + 3;
            }
        }
        if b == b'\n' && !triple {
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// Functions of the environment: the `cel` crate's standard library and kube-cel's extensions.
const FUNCTIONS: &[&str] = &[
    // cel standard library
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
    "value",
    "hasValue",
    "or",
    "orValue",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    // kube-cel
    "add",
    "asApproximateFloat",
    "asInteger",
    "base64.decode",
    "base64.encode",
    "charAt",
    "cidr",
    "compareTo",
    "containsCIDR",
    "containsIP",
    "distinct",
    "family",
    "find",
    "findAll",
    "first",
    "flatten",
    "format",
    "format.byte",
    "format.date",
    "format.datetime",
    "format.dns1035Label",
    "format.dns1035LabelPrefix",
    "format.dns1123Label",
    "format.dns1123LabelPrefix",
    "format.dns1123Subdomain",
    "format.dns1123SubdomainPrefix",
    "format.labelValue",
    "format.named",
    "format.qualifiedName",
    "format.uri",
    "format.uuid",
    "getEscapedPath",
    "getHost",
    "getHostname",
    "getPort",
    "getQuery",
    "getScheme",
    "indexOf",
    "ip",
    "ip.isCanonical",
    "isCIDR",
    "isCIDRv4",
    "isCIDRv6",
    "isGlobalUnicast",
    "isGreaterThan",
    "isIP",
    "isIPv4",
    "isIPv6",
    "isInteger",
    "isLessThan",
    "isLinkLocalMulticast",
    "isLinkLocalUnicast",
    "isLoopback",
    "isQuantity",
    "isSemver",
    "isSorted",
    "isURL",
    "isUnspecified",
    "join",
    "jsonpatch.escapeKey",
    "last",
    "lastIndexOf",
    "lists.range",
    "lowerAscii",
    "major",
    "masked",
    "math.abs",
    "math.bitAnd",
    "math.bitNot",
    "math.bitOr",
    "math.bitShiftLeft",
    "math.bitShiftRight",
    "math.bitXor",
    "math.ceil",
    "math.floor",
    "math.greatest",
    "math.isFinite",
    "math.isInf",
    "math.isNaN",
    "math.least",
    "math.round",
    "math.sign",
    "math.sqrt",
    "math.trunc",
    "minor",
    "patch",
    "prefixLength",
    "quantity",
    "replace",
    "reverse",
    "semver",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    "sign",
    "slice",
    "sort",
    "split",
    "strings.quote",
    "sub",
    "substring",
    "sum",
    "trim",
    "upperAscii",
    "url",
    "validate",
];

/// Operators and internal functions the parser produces.
const OPERATORS: &[&str] = &[
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::SUBSTRACT,
    operators::ADD,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::EQUALS,
    operators::NOT_EQUALS,
    operators::GREATER_EQUALS,
    operators::LESS_EQUALS,
    operators::GREATER,
    operators::LESS,
    operators::NEGATE,
    operators::INDEX,
    operators::OPT_INDEX,
    operators::OPT_SELECT,
    operators::NOT_STRICTLY_FALSE,
    operators::IN,
];

pub(crate) fn is_function(name: &str) -> bool {
    FUNCTIONS.contains(&name)
}

fn undeclared(name: &str) -> CelCompileError {
    CelCompileError::Check(format!(
        "undeclared reference to '{name}' (in container '')"
    ))
}

/// cel-go's checker, as far as it matters here: every identifier is the declared variable or a
/// macro variable, every function exists, no message construction. Returns the tree's depth.
fn check(expr: &IdedExpr, var: CelVar) -> Result<usize, CelCompileError> {
    let mut scope: Vec<&str> = vec![var.name()];
    check_expr(expr, &mut scope)
}

fn check_expr<'e>(expr: &'e IdedExpr, scope: &mut Vec<&'e str>) -> Result<usize, CelCompileError> {
    let children = match &expr.expr {
        Expr::Literal(_) => 0,
        Expr::Ident(name) => {
            if !scope.contains(&name.as_str()) {
                return Err(undeclared(name));
            }
            0
        }
        Expr::Select(select) => check_expr(&select.operand, scope)?,
        Expr::Call(call) => {
            let mut depth = 0;
            let qualified = match call.target.as_deref() {
                Some(IdedExpr {
                    expr: Expr::Ident(prefix),
                    ..
                }) if !scope.contains(&prefix.as_str()) => {
                    let name = format!("{prefix}.{}", call.func_name);
                    if !is_function(&name) {
                        return Err(undeclared(prefix));
                    }
                    true
                }
                _ => false,
            };
            if !qualified {
                if !is_function(&call.func_name) && !OPERATORS.contains(&call.func_name.as_str()) {
                    return Err(undeclared(&call.func_name));
                }
                if let Some(target) = &call.target {
                    depth = depth.max(check_expr(target, scope)?);
                }
            }
            for arg in &call.args {
                depth = depth.max(check_expr(arg, scope)?);
            }
            depth
        }
        Expr::List(list) => {
            let mut depth = 0;
            for element in &list.elements {
                depth = depth.max(check_expr(element, scope)?);
            }
            depth
        }
        Expr::Map(map) => {
            let mut depth = 0;
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(e) => {
                        depth = depth.max(check_expr(&e.key, scope)?);
                        depth = depth.max(check_expr(&e.value, scope)?);
                    }
                    EntryExpr::StructField(f) => {
                        return Err(CelCompileError::Check(format!(
                            "unsupported field initializer '{}'",
                            f.field
                        )));
                    }
                }
            }
            depth
        }
        Expr::Comprehension(c) => {
            let mut depth = check_expr(&c.iter_range, scope)?;
            depth = depth.max(check_expr(&c.accu_init, scope)?);
            let mark = scope.len();
            scope.push(&c.iter_var);
            if let Some(second) = &c.iter_var2 {
                scope.push(second);
            }
            scope.push(&c.accu_var);
            let inner = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_fold(0usize, |d, e| check_expr(e, scope).map(|x| d.max(x)));
            scope.truncate(mark);
            depth.max(inner?)
        }
        Expr::Struct(s) => return Err(undeclared(&s.type_name)),
        Expr::Unspecified => {
            return Err(CelCompileError::Check("unspecified expression".to_string()));
        }
    };
    Ok(children + 1)
}

/// Path segment standing for "every element of the list" (a comprehension over it).
const EACH: &str = "*";

/// The field paths of the root variable an expression reads: maximal select chains from the
/// variable (`object.spec.replicas`, `has(object.metadata.labels)`), where a macro variable
/// ranging over such a chain continues it with [`EACH`]
/// (`object.spec.containers.all(c, has(c.resources))` reads `spec.containers.*.resources`).
/// `None` when the variable is used in any other way (alone, indexed, passed to a function).
fn access_paths(expr: &IdedExpr, var: &str) -> Option<Vec<Vec<String>>> {
    let mut paths: Vec<Vec<String>> = Vec::new();
    let mut scope: Vec<(&str, Option<Vec<String>>)> = Vec::new();
    collect_paths(expr, var, &mut scope, &mut paths);
    if paths.iter().any(Vec::is_empty) {
        return None;
    }
    paths.sort();
    paths.dedup();
    let mut minimal: Vec<Vec<String>> = Vec::new();
    for path in paths {
        if !minimal.iter().any(|prefix| path.starts_with(prefix)) {
            minimal.push(path);
        }
    }
    Some(minimal)
}

/// Names bound by macros, innermost last: `Some(path)` when the name ranges over the elements
/// of a path of the root variable.
type Scope<'e> = Vec<(&'e str, Option<Vec<String>>)>;

fn select_chain(expr: &IdedExpr, var: &str, scope: &Scope<'_>) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) => match scope.iter().rev().find(|(n, _)| n == name) {
            Some((_, alias)) => alias.clone(),
            None if name == var => Some(Vec::new()),
            None => None,
        },
        Expr::Select(select) => {
            let mut path = select_chain(&select.operand, var, scope)?;
            path.push(select.field.clone());
            Some(path)
        }
        _ => None,
    }
}

fn collect_paths<'e>(
    expr: &'e IdedExpr,
    var: &str,
    scope: &mut Scope<'e>,
    paths: &mut Vec<Vec<String>>,
) {
    if let Some(path) = select_chain(expr, var, scope) {
        paths.push(path);
        return;
    }
    match &expr.expr {
        Expr::Select(select) => collect_paths(&select.operand, var, scope, paths),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect_paths(target, var, scope, paths);
            }
            for arg in &call.args {
                collect_paths(arg, var, scope, paths);
            }
        }
        Expr::List(list) => {
            for element in &list.elements {
                collect_paths(element, var, scope, paths);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(e) = &entry.expr {
                    collect_paths(&e.key, var, scope, paths);
                    collect_paths(&e.value, var, scope, paths);
                }
            }
        }
        Expr::Comprehension(c) => {
            collect_paths(&c.accu_init, var, scope, paths);
            // The range's elements are read through the variable; its length always matters.
            let element_path = match select_chain(&c.iter_range, var, scope) {
                Some(mut range) => {
                    range.push(EACH.to_string());
                    paths.push(range.clone());
                    Some(range)
                }
                None => {
                    collect_paths(&c.iter_range, var, scope, paths);
                    None
                }
            };
            let mark = scope.len();
            let first_path = paths.len();
            scope.push((&c.iter_var, element_path.clone()));
            if let Some(second) = &c.iter_var2 {
                scope.push((second, None));
            }
            scope.push((&c.accu_var, None));
            for e in [&c.loop_cond, &c.loop_step, &c.result] {
                collect_paths(e, var, scope, paths);
            }
            scope.truncate(mark);
            // If the body reads the elements only through selections, the bare range path
            // (pushed above, meaning whole elements) is not needed.
            if let Some(element) = element_path {
                let used = paths[first_path..]
                    .iter()
                    .any(|p| p.len() > element.len() && p.starts_with(&element));
                if used && let Some(pos) = paths.iter().position(|p| *p == element) {
                    paths.remove(pos);
                }
            }
        }
        Expr::Literal(_) | Expr::Ident(_) | Expr::Struct(_) | Expr::Unspecified => {}
    }
}

/// The node as a CEL value, keeping only what the path suffixes (relative to the node, sorted)
/// reach. A map keeps the keys the paths name (when present); anything else, or a node where a
/// path ends, is converted whole, so selections behave exactly as on the full object.
fn pruned(node: JRef<'_>, suffixes: &[&[String]], depth: usize) -> CelValue {
    let whole = suffixes.iter().any(|s| s.is_empty()) || depth > MAX_JSON_DEPTH;
    if !whole
        && let JRef::Val(Value::Array(items)) = node
        && suffixes.iter().all(|s| s[0] == EACH)
    {
        // Elements are read only through the paths after `*`.
        let rest: Vec<&[String]> = suffixes.iter().map(|s| &s[1..]).collect();
        return CelValue::List(Arc::new(
            items
                .iter()
                .map(|item| pruned(JRef::Val(item), &rest, depth + 1))
                .collect(),
        ));
    }
    // A map whose keys are iterated (`*` on a map) is needed whole, as is anything else.
    if whole || !node.is_map() || suffixes.iter().any(|s| s[0] == EACH) {
        return match node {
            JRef::Root(root) => root_to_cel(root),
            JRef::Val(value) => to_cel_at(value, depth),
        };
    }
    let mut out: HashMap<Key, CelValue> = HashMap::new();
    let mut start = 0;
    while start < suffixes.len() {
        let key = &suffixes[start][0];
        let mut end = start;
        while end < suffixes.len() && suffixes[end][0] == *key {
            end += 1;
        }
        if let Some(value) = node.get(key) {
            let rest: Vec<&[String]> = suffixes[start..end].iter().map(|s| &s[1..]).collect();
            out.insert(
                Key::String(Arc::new(key.clone())),
                pruned(JRef::Val(value), &rest, depth + 1),
            );
        }
        start = end;
    }
    CelValue::Map(CelMap { map: Arc::new(out) })
}

/// The whole object (with defaulted metadata) as a CEL map.
pub(crate) fn root_to_cel(root: Root<'_>) -> CelValue {
    let mut out: HashMap<Key, CelValue> = HashMap::with_capacity(root.len());
    for (k, v) in root.entries() {
        out.insert(Key::String(Arc::new(k.to_string())), to_cel_at(v, 1));
    }
    CelValue::Map(CelMap { map: Arc::new(out) })
}

/// cel-go-like text for an evaluation error.
fn describe_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchKey(key) => format!("no such key: {key}"),
        ExecutionError::NoSuchOverload => "no such overload".to_string(),
        ExecutionError::UndeclaredReference(name) => {
            format!("undeclared reference to '{name}'")
        }
        ExecutionError::DivisionByZero(_) => "division by zero".to_string(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_string(),
        ExecutionError::Overflow(..) => "integer overflow".to_string(),
        other => other.to_string(),
    }
}

/// The JSON value as a CEL value, numbers as the original's decoder has them.
pub(crate) fn to_cel(value: &Value) -> CelValue {
    to_cel_at(value, 0)
}

fn to_cel_at(value: &Value, depth: usize) -> CelValue {
    if depth > MAX_JSON_DEPTH {
        return CelValue::Null;
    }
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match go_number(n) {
            GoNumber::Int(i) => CelValue::Int(i),
            GoNumber::Float(f) => CelValue::Float(f),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(
            items.iter().map(|v| to_cel_at(v, depth + 1)).collect(),
        )),
        Value::Object(map) => map_to_cel_at(map, depth),
    }
}

fn map_to_cel_at(map: &Map<String, Value>, depth: usize) -> CelValue {
    let mut out: HashMap<Key, CelValue> = HashMap::with_capacity(map.len());
    for (k, v) in map {
        out.insert(Key::String(Arc::new(k.clone())), to_cel_at(v, depth + 1));
    }
    CelValue::Map(CelMap { map: Arc::new(out) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval(source: &str, object: Value) -> Result<bool, String> {
        let program = CelProgram::compile(source, CelVar::Object).map_err(|e| e.describe())?;
        let Value::Object(map) = object else {
            panic!("object")
        };
        let root = Root::plain(&map);
        let ctx = context_with(CelVar::Object, program.object_value(root));
        program.evaluate(&ctx, Binding::Object(root), &mut SizeMemo::default())
    }

    #[test]
    fn evaluates_against_the_object() {
        let obj = json!({"metadata": {"name": "secure-x"}, "spec": {"replicas": 3, "f": 2.0}});
        assert_eq!(
            eval("object.metadata.name.startsWith('secure-')", obj.clone()),
            Ok(true)
        );
        assert_eq!(eval("object.spec.replicas <= 10", obj.clone()), Ok(true));
        // 2.0 is an integer after the original's decode.
        assert_eq!(eval("object.spec.f == 2", obj.clone()), Ok(true));
        assert_eq!(eval("object.spec.replicas", obj.clone()), Ok(false));
        assert_eq!(
            eval("object.spec.missing == 1", obj.clone()),
            Err("no such key: missing".into())
        );
        assert_eq!(eval("has(object.spec.missing)", obj.clone()), Ok(false));
        assert_eq!(eval("'a-b'.split('-').size() == 2", obj.clone()), Ok(true));
        assert_eq!(
            eval("quantity('1Gi').isGreaterThan(quantity('1Mi'))", obj),
            Ok(true)
        );
    }

    #[test]
    fn check_errors() {
        let err = |s: &str, var| CelProgram::compile(s, var).map(|_| ()).expect_err(s);
        assert_eq!(
            err("self.x == 1", CelVar::Object),
            CelCompileError::Check("undeclared reference to 'self' (in container '')".into())
        );
        assert_eq!(
            err("object.x == 1", CelVar::Value),
            CelCompileError::Check("undeclared reference to 'object' (in container '')".into())
        );
        assert!(matches!(
            err("Foo{a: 1}", CelVar::Object),
            CelCompileError::Check(_)
        ));
        assert!(matches!(
            err("nope(1)", CelVar::Object),
            CelCompileError::Check(_)
        ));
        assert!(matches!(
            err("1 +", CelVar::Object),
            CelCompileError::Parse(_)
        ));
        assert!(
            CelProgram::compile("[1, 2].all(x, x > 0) && value == null", CelVar::Value).is_ok()
        );
        assert!(CelProgram::compile("sets.contains([1], [1])", CelVar::Value).is_ok());
        assert!(CelProgram::compile("math.greatest([1, 2]) == 2", CelVar::Value).is_ok());
    }

    #[test]
    fn every_listed_function_is_registered() {
        for name in FUNCTIONS {
            let call = match name.split_once('.') {
                Some((prefix, func)) => format!("{prefix}.{func}()"),
                None => format!("{name}()"),
            };
            let program = Program::compile(&call).expect(name);
            let ctx = ROOT.new_inner_scope();
            let result = catch_unwind(AssertUnwindSafe(|| program.execute(&ctx)));
            if let Ok(Err(ExecutionError::UndeclaredReference(r))) = result {
                panic!("{name} is not registered ({r})");
            }
        }
    }

    #[test]
    fn deep_expressions_are_refused_or_evaluated_safely() {
        let deep = format!("{}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(matches!(
            CelProgram::compile(&deep, CelVar::Object),
            Err(CelCompileError::Parse(_))
        ));
        let chain = vec!["1"; 3000].join(" + ");
        assert!(CelProgram::compile(&chain, CelVar::Object).is_err());
        let ok = format!("{} == 40", vec!["1"; 40].join(" + "));
        assert_eq!(eval(&ok, json!({})), Ok(true));
        // Within the parser's own limit (96 levels): parsed on the big stack, evaluated on it
        // when deep; beyond it, a parse error.
        let parens = format!("{}1{} == 1", "(".repeat(90), ")".repeat(90));
        assert_eq!(eval(&parens, json!({})), Ok(true));
        let parens = format!("{}1{} == 1", "(".repeat(200), ")".repeat(200));
        assert!(eval(&parens, json!({})).is_err());
        let lists = format!("{}1{} != []", "[".repeat(80), "]".repeat(80));
        assert_eq!(eval(&lists, json!({})), Ok(true));
        let selects = format!("has(object{})", ".a".repeat(90));
        assert_eq!(eval(&selects, json!({})), Err("no such key: a".into()));
        let strings = format!("'{}' == '{}'", "(".repeat(1000), "(".repeat(1000));
        assert_eq!(eval(&strings, json!({})), Ok(true));
    }

    #[test]
    fn inline_programs_fit_a_small_stack() {
        // Every shape at the deepest depth still evaluated inline must run on a 1 MiB stack
        // (tokio's worker threads have 2 MiB), even unoptimised.
        type Shape = fn(usize) -> String;
        let shapes: [Shape; 6] = [
            |n| format!("object{} == 1", ".a".repeat(n)),
            |n| vec!["1"; n].join(" + ") + " > 0",
            |n| format!("{}1{} != []", "[".repeat(n), "]".repeat(n)),
            |n| format!("'a'{} == 'a'", ".lowerAscii()".repeat(n)),
            |n| format!("{}true{}", "[1].all(x, ".repeat(n), ")".repeat(n)),
            |n| format!("{}1{} == 1", "(true ? ".repeat(n), " : 2)".repeat(n)),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                let mut deepest = Vec::new();
                for shape in shapes {
                    let mut last = 0;
                    for n in 1.. {
                        let source = shape(n);
                        let program =
                            CelProgram::compile(&source, CelVar::Object).expect("compiles");
                        if program.depth > INLINE_DEPTH {
                            break;
                        }
                        last = program.depth;
                        let obj = Map::new();
                        let root = Root::plain(&obj);
                        let ctx = context_with(CelVar::Object, program.object_value(root));
                        let _ =
                            program.evaluate(&ctx, Binding::Object(root), &mut SizeMemo::default());
                    }
                    deepest.push(last);
                }
                deepest
            })
            .expect("thread");
        let deepest = handle.join().expect("no stack overflow");
        assert!(
            deepest.iter().all(|d| *d >= INLINE_DEPTH - 2),
            "{deepest:?}"
        );
    }

    #[test]
    fn access_paths_and_pruning() {
        let paths = |src: &str| {
            let program = CelProgram::compile(src, CelVar::Object).expect(src);
            program.paths
        };
        assert_eq!(
            paths(
                "object.metadata.name == 'a' && has(object.metadata.labels.team) && object.metadata.name != ''"
            ),
            Some(vec![
                vec![
                    "metadata".to_string(),
                    "labels".to_string(),
                    "team".to_string()
                ],
                vec!["metadata".to_string(), "name".to_string()],
            ])
        );
        let p = |segments: &[&str]| segments.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            paths("object.spec.containers.all(c, c.name != '' && object.spec.x == 1)"),
            Some(vec![
                p(&["spec", "containers", "*", "name"]),
                p(&["spec", "x"])
            ])
        );
        assert_eq!(
            paths("object.spec.containers.all(c, c.ports.all(q, q.port > 0))"),
            Some(vec![p(&["spec", "containers", "*", "ports", "*", "port"])])
        );
        assert_eq!(
            paths("object.spec.containers.all(c, true)"),
            Some(vec![p(&["spec", "containers", "*"])])
        );
        assert_eq!(
            paths("object.spec.containers.exists(c, c == {'name': 'x'})"),
            Some(vec![p(&["spec", "containers", "*"])])
        );
        assert_eq!(
            paths("object.data.all(k, size(object.data[k]) < 10)"),
            Some(vec![p(&["data"])])
        );
        assert_eq!(
            paths("object.spec == object.spec && object.spec.x == 1"),
            Some(vec![vec!["spec".to_string()]])
        );
        assert_eq!(paths("size(object) > 1"), None);
        assert_eq!(paths("object['spec'].x == 1"), None);
        // A comprehension variable named like the root shadows it.
        assert_eq!(paths("[{'a': 1}].all(object, object.a == 1)"), Some(vec![]));

        // Pruned evaluation gives the same results as the whole object.
        let obj = json!({"metadata": {"name": "web", "labels": {"team": "a"}},
                         "spec": {"replicas": 3, "x": "s", "containers": [{"name": "c"}]}});
        for (src, expected) in [
            ("object.spec.replicas.foo", Ok(false)),
            (
                "object.spec.replicas == 3 && object.metadata.name == 'web'",
                Ok(true),
            ),
            (
                "has(object.metadata.labels.team) && !has(object.metadata.annotations)",
                Ok(true),
            ),
            (
                "object.spec.missing == 1",
                Err("no such key: missing".to_string()),
            ),
            ("object.spec.x.missing == 1", Ok(false)),
            ("object.spec.containers.all(c, c.name == 'c')", Ok(true)),
            ("object.spec.containers.all(c, !has(c.image))", Ok(true)),
            ("object.spec.containers.map(c, c.name) == ['c']", Ok(true)),
            (
                "object.spec.containers.all(c, c.missing == 1)",
                Err("no such key: missing".to_string()),
            ),
            ("object.metadata.labels.all(k, k == 'team')", Ok(true)),
            (
                "object.spec.x.all(c, c.y)",
                Err("no such overload".to_string()),
            ),
            ("object.metadata.size() == 2", Ok(true)),
        ] {
            assert_eq!(eval(src, obj.clone()), expected, "{src}");
        }
    }

    #[test]
    fn nesting_estimate_ignores_strings_and_comments() {
        assert_eq!(nesting_estimate("'((((' // (((\n"), 1);
        assert!(nesting_estimate("((a))") >= 3);
        assert!(nesting_estimate("a.b.c.d") >= 4);
        assert_eq!(nesting_estimate("a && b && c"), 1);
    }
}
