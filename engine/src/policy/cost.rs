//! Cost bound for CEL programs (docs/adr/0004-cel-cost-limit.md).
//!
//! The `cel` crate has no cost tracking and no interruption, so a program is never started unless
//! an upper bound of its cost, computed over its syntax tree *and the actual input*, is within the
//! limit. The bound is an abstract interpretation: every subexpression gets an upper bound of its
//! result's size (nodes plus bytes), length (list/map entries, string bytes) and integer value,
//! and of the work to compute it. Where the value comes straight from the object (`object.spec`,
//! the elements of `object.spec.containers`), the bound uses the real JSON nodes, so realistic
//! objects get tight bounds; anything computed gets a worst case.
//!
//! Units follow cel-go's roughly: 1 per node evaluated or function called, 0.1 per byte or
//! element copied, compared or scanned. Work the `cel` crate (0.13) really does is charged,
//! including its deep copies on field selection and its quadratic `map`/`filter` accumulation.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use kube_cel::cel::common::ast::{ComprehensionExpr, Expr, IdedExpr, LiteralValue, operators};
use serde_json::{Map, Value};

use super::cel::CelVar;
use super::fields::{JRef, Root};

/// The original's cost limit.
pub(crate) const COST_LIMIT: f64 = super::CEL_COST_LIMIT as f64;

/// Whether an estimated cost is within the limit (NaN is not).
pub(crate) fn within_limit(cost: f64) -> bool {
    cost <= COST_LIMIT
}

/// Largest set of concrete JSON nodes tracked for one subexpression; larger sets are summarised.
const MAX_KNOWN: usize = 4096;

/// Extra charge for compiling a regular expression that is not a literal.
const DYNAMIC_REGEX: f64 = 10_000.0;

static FALSE: Value = Value::Bool(false);
static NULL: Value = Value::Null;

/// What the program's variable is bound to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Binding<'v> {
    /// The smallest input: `object` an empty map, `value` null (used at compile time).
    Empty,
    /// `object` bound to this object.
    Object(Root<'v>),
    /// `value` bound to this value (`None`: the field is missing, so null).
    Value(Option<&'v Value>),
}

/// Sizes of JSON nodes already measured, keyed by address; shared by the programs of one object.
#[derive(Debug, Default)]
pub(crate) struct SizeMemo {
    sizes: HashMap<usize, f64, BuildHasherDefault<AddressHasher>>,
}

/// Hasher for node addresses (cheaper than SipHash; addresses are not attacker-chosen).
#[derive(Debug, Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        let h = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

impl SizeMemo {
    fn map_size(&mut self, map: &Map<String, Value>) -> f64 {
        let key = map as *const Map<String, Value> as usize;
        if let Some(size) = self.sizes.get(&key) {
            return *size;
        }
        let mut size = 1.0;
        for (k, v) in map {
            size += 1.0 + k.len() as f64 + self.value_size(v);
        }
        self.sizes.insert(key, size);
        size
    }

    fn value_size(&mut self, value: &Value) -> f64 {
        match value {
            Value::Object(map) => self.map_size(map),
            Value::Array(items) => {
                let key = value as *const Value as usize;
                if let Some(size) = self.sizes.get(&key) {
                    return *size;
                }
                let mut size = 1.0;
                for item in items {
                    size += self.value_size(item);
                }
                self.sizes.insert(key, size);
                size
            }
            Value::String(s) => 1.0 + s.len() as f64,
            _ => 1.0,
        }
    }

    fn stats(&mut self, node: JRef<'_>) -> Approx {
        match node {
            JRef::Root(root) => Approx {
                size: self.map_size(root.object)
                    + root.metadata.map_or(0.0, |m| self.value_size(m)),
                len: root.len() as f64,
                int: 0.0,
            },
            JRef::Val(value) => Approx {
                size: self.value_size(value),
                len: match value {
                    Value::String(s) => s.len() as f64,
                    Value::Array(items) => items.len() as f64,
                    Value::Object(map) => map.len() as f64,
                    _ => 0.0,
                },
                int: match value {
                    Value::Number(n) => n
                        .as_i64()
                        .map(|i| i.unsigned_abs() as f64)
                        .or_else(|| n.as_f64().map(f64::abs))
                        .unwrap_or(f64::INFINITY),
                    _ => 0.0,
                },
            },
        }
    }
}

/// Upper bounds of a value.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Approx {
    /// Nodes plus string bytes.
    size: f64,
    /// Entries of a list or map, bytes of a string.
    len: f64,
    /// Absolute value of an integer.
    int: f64,
}

impl Approx {
    const SCALAR: Approx = Approx {
        size: 1.0,
        len: 0.0,
        int: f64::INFINITY,
    };

    fn max(self, other: Approx) -> Approx {
        Approx {
            size: self.size.max(other.size),
            len: self.len.max(other.len),
            int: self.int.max(other.int),
        }
    }

    /// A part of a value of these bounds (field, element, entry).
    fn part(self) -> Approx {
        Approx {
            size: (self.size - 1.0).max(1.0),
            len: self.size,
            int: f64::INFINITY,
        }
    }

    fn string(len: f64) -> Approx {
        Approx {
            size: 1.0 + len,
            len,
            int: f64::INFINITY,
        }
    }

    fn list(len: f64, element_size: f64) -> Approx {
        Approx {
            size: 1.0 + mul(len, 1.0 + element_size),
            len,
            int: f64::INFINITY,
        }
    }
}

/// Abstract value: the concrete JSON nodes it may be, or bounds.
#[derive(Clone, Debug)]
enum Abs<'v> {
    Known(Vec<JRef<'v>>),
    Approx(Approx),
}

impl<'v> Abs<'v> {
    fn known(nodes: Vec<JRef<'v>>, memo: &mut SizeMemo) -> Abs<'v> {
        if nodes.len() > MAX_KNOWN {
            Abs::Approx(summarise(&nodes, memo))
        } else {
            Abs::Known(nodes)
        }
    }

    fn bounds(&self, memo: &mut SizeMemo) -> Approx {
        match self {
            Abs::Known(nodes) => summarise(nodes, memo),
            Abs::Approx(a) => *a,
        }
    }

    fn join(self, other: Abs<'v>, memo: &mut SizeMemo) -> Abs<'v> {
        match (self, other) {
            (Abs::Known(mut a), Abs::Known(b)) => {
                a.extend(b);
                Abs::known(a, memo)
            }
            (a, b) => Abs::Approx(a.bounds(memo).max(b.bounds(memo))),
        }
    }

    fn select(&self, field: &str, memo: &mut SizeMemo) -> Abs<'v> {
        match self {
            Abs::Known(nodes) => {
                let mut out = Vec::with_capacity(nodes.len());
                for node in nodes {
                    if node.is_map() {
                        if let Some(v) = node.get(field) {
                            out.push(JRef::Val(v));
                        }
                    } else {
                        // The `cel` crate answers `false` for a field of a non-map.
                        out.push(JRef::Val(&FALSE));
                    }
                }
                Abs::known(out, memo)
            }
            Abs::Approx(a) => Abs::Approx(a.part()),
        }
    }

    fn index(&self, key: Option<&LiteralValue>, memo: &mut SizeMemo) -> Abs<'v> {
        match self {
            Abs::Known(nodes) => {
                let mut out = Vec::new();
                for node in nodes {
                    if node.is_map() {
                        match key {
                            Some(LiteralValue::String(s)) => {
                                if let Some(v) = node.get(s.inner()) {
                                    out.push(JRef::Val(v));
                                }
                            }
                            _ => out.extend(node.entries().map(|(_, v)| JRef::Val(v))),
                        }
                    } else if let Some(Value::Array(items)) = node.as_value() {
                        match key {
                            Some(LiteralValue::Int(i)) => {
                                if let Some(v) =
                                    usize::try_from(*i.inner()).ok().and_then(|i| items.get(i))
                                {
                                    out.push(JRef::Val(v));
                                }
                            }
                            _ => out.extend(items.iter().map(JRef::Val)),
                        }
                        if out.len() > MAX_KNOWN {
                            return Abs::Approx(summarise(&out, memo));
                        }
                    }
                }
                Abs::known(out, memo)
            }
            Abs::Approx(a) => Abs::Approx(a.part()),
        }
    }

    /// What a comprehension variable ranges over, and how many iterations at most.
    fn elements(&self, memo: &mut SizeMemo) -> (Abs<'v>, f64) {
        match self {
            Abs::Known(nodes) => {
                let mut items: Vec<JRef<'v>> = Vec::new();
                let mut keys: Option<Approx> = None;
                let mut count: f64 = 0.0;
                for node in nodes {
                    if node.is_map() {
                        let (entries, longest) = node
                            .entries()
                            .fold((0usize, 0usize), |(n, l), (k, _)| (n + 1, l.max(k.len())));
                        count = count.max(entries as f64);
                        let longest = longest as f64;
                        let key = Approx::string(longest);
                        keys = Some(keys.map_or(key, |k| k.max(key)));
                    } else if let Some(Value::Array(list)) = node.as_value() {
                        count = count.max(list.len() as f64);
                        items.extend(list.iter().map(JRef::Val));
                        if items.len() > MAX_KNOWN {
                            let summary = summarise(&items, memo);
                            items.clear();
                            keys = Some(keys.map_or(summary, |k| k.max(summary)));
                        }
                    }
                }
                let elements = match keys {
                    None => Abs::Known(items),
                    Some(k) => Abs::Approx(k.max(summarise(&items, memo))),
                };
                (elements, count)
            }
            Abs::Approx(a) => (Abs::Approx(a.part()), a.len.max(0.0)),
        }
    }
}

fn summarise(nodes: &[JRef<'_>], memo: &mut SizeMemo) -> Approx {
    nodes
        .iter()
        .map(|n| memo.stats(*n))
        .reduce(Approx::max)
        .unwrap_or(Approx {
            size: 1.0,
            len: 0.0,
            int: 0.0,
        })
}

/// Product that treats 0 × ∞ as 0 (no iterations cost nothing).
fn mul(a: f64, b: f64) -> f64 {
    if a == 0.0 || b == 0.0 { 0.0 } else { a * b }
}

/// Upper bound of the cost of evaluating `expr` with `var` bound as `binding`.
pub(crate) fn estimate(
    expr: &IdedExpr,
    var: CelVar,
    binding: Binding<'_>,
    memo: &mut SizeMemo,
) -> f64 {
    let empty = Map::new();
    let root = match (var, binding) {
        (CelVar::Object, Binding::Object(root)) => Abs::Known(vec![JRef::Root(root)]),
        (CelVar::Object, _) => Abs::Known(vec![JRef::Root(Root::plain(&empty))]),
        (CelVar::Value, Binding::Value(Some(v))) => Abs::Known(vec![JRef::Val(v)]),
        (CelVar::Value, _) => Abs::Known(vec![JRef::Val(&NULL)]),
    };
    let mut estimator = Estimator {
        scope: vec![(var.name(), root)],
        memo,
    };
    let (_, cost) = estimator.est(expr);
    if cost.is_nan() { f64::INFINITY } else { cost }
}

struct Estimator<'v, 'e, 'm> {
    scope: Vec<(&'e str, Abs<'v>)>,
    memo: &'m mut SizeMemo,
}

/// How a macro's comprehension steps, recognised from the shapes the parser generates.
enum Step<'e> {
    /// `all`, `exists`: `@result && p`, `@result || p`.
    Bool(&'e IdedExpr),
    /// `exists_one`: `p ? @result + 1 : @result`.
    Count(&'e IdedExpr),
    /// `map`, `filter`: `@result + [e]`, optionally under `f ? ... : @result`.
    Append(Option<&'e IdedExpr>, &'e IdedExpr),
}

fn is_accu(expr: &IdedExpr, accu: &str) -> bool {
    matches!(&expr.expr, Expr::Ident(name) if name == accu)
}

fn step_shape<'e>(c: &'e ComprehensionExpr) -> Option<Step<'e>> {
    let Expr::Call(call) = &c.loop_step.expr else {
        return None;
    };
    let accu = c.accu_var.as_str();
    let append = |e: &'e IdedExpr| -> Option<&'e IdedExpr> {
        let Expr::Call(add) = &e.expr else {
            return None;
        };
        if add.func_name != operators::ADD || add.args.len() != 2 || !is_accu(&add.args[0], accu) {
            return None;
        }
        match &add.args[1].expr {
            Expr::List(list) if list.elements.len() == 1 => Some(&list.elements[0]),
            _ => None,
        }
    };
    match (call.func_name.as_str(), call.args.as_slice()) {
        (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, p]) if is_accu(a, accu) => {
            Some(Step::Bool(p))
        }
        (operators::ADD, _) => append(&c.loop_step).map(|e| Step::Append(None, e)),
        (operators::CONDITIONAL, [p, then, otherwise]) if is_accu(otherwise, accu) => {
            if let Some(e) = append(then) {
                return Some(Step::Append(Some(p), e));
            }
            match &then.expr {
                Expr::Call(add)
                    if add.func_name == operators::ADD
                        && add.args.len() == 2
                        && is_accu(&add.args[0], accu) =>
                {
                    Some(Step::Count(p))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

impl<'v, 'e> Estimator<'v, 'e, '_> {
    fn lookup(&self, name: &str) -> Abs<'v> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a.clone())
            .unwrap_or(Abs::Approx(Approx {
                size: f64::INFINITY,
                len: f64::INFINITY,
                int: f64::INFINITY,
            }))
    }

    fn size(&mut self, abs: &Abs<'v>) -> f64 {
        abs.bounds(self.memo).size
    }

    fn est(&mut self, expr: &'e IdedExpr) -> (Abs<'v>, f64) {
        match &expr.expr {
            Expr::Literal(lit) => match lit {
                LiteralValue::Int(i) => (
                    Abs::Approx(Approx {
                        size: 1.0,
                        len: 0.0,
                        int: i.inner().unsigned_abs() as f64,
                    }),
                    1.0,
                ),
                LiteralValue::UInt(u) => (
                    Abs::Approx(Approx {
                        size: 1.0,
                        len: 0.0,
                        int: *u.inner() as f64,
                    }),
                    1.0,
                ),
                LiteralValue::String(s) => {
                    let len = s.inner().len() as f64;
                    (Abs::Approx(Approx::string(len)), 1.0 + 0.1 * len)
                }
                LiteralValue::Bytes(b) => {
                    let len = b.inner().len() as f64;
                    (Abs::Approx(Approx::string(len)), 1.0 + 0.1 * len)
                }
                _ => (Abs::Approx(Approx::SCALAR), 1.0),
            },
            Expr::Ident(name) => (self.lookup(name), 1.0),
            Expr::Select(select) => {
                let (operand, cost) = self.est(&select.operand);
                if select.test {
                    return (Abs::Approx(Approx::SCALAR), cost + 1.0);
                }
                let result = operand.select(&select.field, self.memo);
                let copy = 0.1 * self.size(&result);
                (result, cost + 1.0 + copy)
            }
            Expr::List(list) => {
                let mut cost = 1.0;
                let mut size = 1.0;
                let mut element = 0.0f64;
                for e in &list.elements {
                    let (a, c) = self.est(e);
                    let s = self.size(&a);
                    cost += c + 0.1 * s;
                    size += s + 1.0;
                    element = element.max(s);
                }
                let len = list.elements.len() as f64;
                (
                    Abs::Approx(Approx {
                        size,
                        len,
                        int: f64::INFINITY,
                    }),
                    cost,
                )
            }
            Expr::Map(map) => {
                let mut cost = 1.0;
                let mut size = 1.0;
                for entry in &map.entries {
                    if let kube_cel::cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                        let (k, ck) = self.est(&e.key);
                        let (v, cv) = self.est(&e.value);
                        let s = self.size(&k) + self.size(&v);
                        cost += ck + cv + 0.1 * s;
                        size += s + 1.0;
                    } else {
                        return (Abs::Approx(Approx::SCALAR), f64::INFINITY);
                    }
                }
                (
                    Abs::Approx(Approx {
                        size,
                        len: map.entries.len() as f64,
                        int: f64::INFINITY,
                    }),
                    cost,
                )
            }
            Expr::Call(call) => self.call(call),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Struct(_) | Expr::Unspecified => (Abs::Approx(Approx::SCALAR), f64::INFINITY),
        }
    }

    fn comprehension(&mut self, c: &'e ComprehensionExpr) -> (Abs<'v>, f64) {
        let (range, range_cost) = self.est(&c.iter_range);
        let (_, init_cost) = self.est(&c.accu_init);
        let (element, n) = range.elements(self.memo);
        let element_size = self.size(&element);
        let Some(step) = step_shape(c) else {
            return (Abs::Approx(Approx::SCALAR), f64::INFINITY);
        };
        let mark = self.scope.len();
        self.scope.push((c.iter_var.as_str(), element.clone()));
        if let Some(second) = &c.iter_var2 {
            self.scope.push((second.as_str(), element));
        }
        // Per iteration: loop condition, step call, copying the element into the scope.
        let overhead = 4.0 + 0.1 * element_size;
        let (result, per_iteration) = match step {
            Step::Bool(p) => {
                let (_, cp) = self.est(p);
                (Abs::Approx(Approx::SCALAR), cp + overhead)
            }
            Step::Count(p) => {
                let (_, cp) = self.est(p);
                (
                    Abs::Approx(Approx {
                        size: 1.0,
                        len: 0.0,
                        int: n,
                    }),
                    cp + overhead,
                )
            }
            Step::Append(filter, e) => {
                let filter_cost = filter.map(|f| self.est(f).1).unwrap_or(0.0);
                let (item, ce) = self.est(e);
                let item_size = self.size(&item);
                let accu = Approx::list(n, item_size);
                // The accumulator is copied into the scope and again by `+` on every step.
                (
                    Abs::Approx(accu),
                    filter_cost + ce + overhead + 0.1 * item_size + 0.2 * accu.size,
                )
            }
        };
        self.scope.truncate(mark);
        let result_size = self.size(&result);
        let cost = range_cost + init_cost + mul(n, per_iteration) + 2.0 + 0.1 * result_size;
        (result, cost)
    }

    fn call(&mut self, call: &'e kube_cel::cel::common::ast::CallExpr) -> (Abs<'v>, f64) {
        let name = call.func_name.as_str();
        match name {
            operators::LOGICAL_AND
            | operators::LOGICAL_OR
            | operators::LOGICAL_NOT
            | operators::NOT_STRICTLY_FALSE => {
                let cost = self.args_cost(&call.args);
                return (Abs::Approx(Approx::SCALAR), cost + 1.0);
            }
            operators::CONDITIONAL if call.args.len() == 3 => {
                let (_, c0) = self.est(&call.args[0]);
                let (a, c1) = self.est(&call.args[1]);
                let (b, c2) = self.est(&call.args[2]);
                return (a.join(b, self.memo), c0 + c1 + c2 + 1.0);
            }
            operators::INDEX | operators::OPT_INDEX if call.args.len() == 2 => {
                let (container, c0) = self.est(&call.args[0]);
                let (_, c1) = self.est(&call.args[1]);
                let key = match &call.args[1].expr {
                    Expr::Literal(lit) => Some(lit),
                    _ => None,
                };
                let result = container.index(key, self.memo);
                let copy = 0.1 * self.size(&result);
                return (result, c0 + c1 + 1.0 + copy);
            }
            operators::OPT_SELECT if call.args.len() == 2 => {
                let (operand, c0) = self.est(&call.args[0]);
                let (_, c1) = self.est(&call.args[1]);
                let result = match &call.args[1].expr {
                    Expr::Literal(LiteralValue::String(s)) => operand.select(s.inner(), self.memo),
                    _ => Abs::Approx(operand.bounds(self.memo).part()),
                };
                let copy = 0.1 * self.size(&result);
                return (result, c0 + c1 + 1.0 + copy);
            }
            _ => {}
        }

        // Everything else: evaluate the operands, then charge the operation.
        let qualified = match call.target.as_deref() {
            Some(IdedExpr {
                expr: Expr::Ident(prefix),
                ..
            }) if !self.scope.iter().any(|(n, _)| *n == prefix.as_str()) => {
                Some(format!("{prefix}.{name}"))
            }
            _ => None,
        };
        let mut operands: Vec<(Approx, &'e IdedExpr)> = Vec::new();
        let mut cost = 1.0;
        if qualified.is_none()
            && let Some(target) = call.target.as_deref()
        {
            let (a, c) = self.est(target);
            operands.push((a.bounds(self.memo), target));
            cost += c;
        }
        for arg in &call.args {
            let (a, c) = self.est(arg);
            operands.push((a.bounds(self.memo), arg));
            cost += c;
        }
        let name = qualified.as_deref().unwrap_or(name);
        let total: f64 = operands.iter().map(|(a, _)| a.size).sum();
        let first = operands.first().map(|(a, _)| *a).unwrap_or(Approx::SCALAR);
        let second = operands.get(1).map(|(a, _)| *a).unwrap_or(Approx::SCALAR);
        let (result, work) = operation(name, &operands, first, second, total);
        let result_size = result.size;
        // Operands are converted to values for function calls, and the result back.
        (
            Abs::Approx(result),
            cost + work + 0.1 * total + 0.1 * result_size,
        )
    }

    fn args_cost(&mut self, args: &'e [IdedExpr]) -> f64 {
        args.iter().map(|a| self.est(a).1).sum()
    }
}

/// Result bounds and work of an operator or function, given its operands' bounds.
fn operation(
    name: &str,
    operands: &[(Approx, &IdedExpr)],
    a: Approx,
    b: Approx,
    total: f64,
) -> (Approx, f64) {
    let scalar = Approx::SCALAR;
    let int = |bound: f64| Approx {
        size: 1.0,
        len: 0.0,
        int: bound,
    };
    let linear = 0.1 * total + a.len;
    match name {
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS => (scalar, 0.1 * a.size.min(b.size)),
        operators::IN => (scalar, mul(b.len, 1.0 + 0.1 * a.size) + 0.1 * b.size),
        operators::ADD => (
            Approx {
                size: a.size + b.size,
                len: a.len + b.len,
                int: a.int + b.int,
            },
            0.1 * (a.size + b.size),
        ),
        operators::SUBSTRACT => (int(a.int + b.int), 1.0),
        operators::MULTIPLY => (int(mul(a.int, b.int)), 1.0),
        operators::DIVIDE | operators::MODULO => (int(a.int), 1.0),
        operators::NEGATE => (int(a.int), 1.0),
        "size" => (int(a.len), 1.0),
        "contains" | "startsWith" | "endsWith" => (scalar, 0.1 * total),
        "matches" | "find" | "findAll" => {
            let (pattern, dynamic) = match operands.get(1).map(|(_, e)| &e.expr) {
                Some(Expr::Literal(LiteralValue::String(s))) => (s.inner().len() as f64, 0.0),
                _ => (b.size, DYNAMIC_REGEX),
            };
            let work = dynamic + 10.0 * pattern + 0.1 * mul(a.size, 1.0 + pattern / 8.0);
            let result = match name {
                "matches" => scalar,
                "find" => Approx::string(a.len),
                _ => Approx::list(a.len + 1.0, a.len),
            };
            (result, work + if name == "findAll" { a.len } else { 0.0 })
        }
        "string" => (Approx::string(8.0 * a.size + 32.0), linear),
        "int" | "uint" | "double" | "bytes" | "duration" | "timestamp" => {
            (Approx::string(a.size), linear)
        }
        "replace" => {
            // Every match of the old text can become the new text (and "" matches everywhere).
            let replacement = operands.get(2).map(|(x, _)| x.len).unwrap_or(0.0);
            let len = mul(a.len + 1.0, replacement + 1.0) + a.len;
            (
                Approx::string(len),
                0.1 * len + 0.1 * mul(a.size, 1.0 + b.len),
            )
        }
        "split" => (Approx::list(a.len + 1.0, a.len), a.len + 0.1 * total),
        "join" => {
            let len = a.size + mul(a.len, b.len);
            (Approx::string(len), 0.1 * len + a.len)
        }
        "strings.quote" => (Approx::string(10.0 * a.len + 2.0), a.len),
        "base64.encode" => (Approx::string(2.0 * a.len + 4.0), 0.1 * total),
        "format" => {
            // Widths and precisions in the format text can pad the output.
            let text = operands.first().map(|(_, e)| &e.expr);
            match text {
                Some(Expr::Literal(LiteralValue::String(s))) => {
                    let widest = largest_number(s.inner());
                    let len = mul(a.len + 1.0, widest + 1.0) + 8.0 * b.size;
                    (Approx::string(len), 0.1 * len + 0.1 * total)
                }
                _ => (scalar, f64::INFINITY),
            }
        }
        "lists.range" => (Approx::list(a.int, 1.0), a.int),
        "distinct" => (a, mul(a.len, a.len) + 0.1 * a.size),
        "sort" => (
            a,
            mul(a.len, (a.len + 2.0).log2()) * (1.0 + 0.1 * a.size / a.len.max(1.0)),
        ),
        "sets.contains" | "sets.intersects" | "sets.equivalent" => (
            scalar,
            mul(a.len + 1.0, b.len + 1.0) * (1.0 + 0.1 * a.size.min(b.size)),
        ),
        "flatten"
        | "reverse"
        | "slice"
        | "first"
        | "last"
        | "max"
        | "min"
        | "sum"
        | "isSorted"
        | "math.greatest"
        | "math.least"
        | "indexOf"
        | "lastIndexOf"
        | "charAt"
        | "substring"
        | "lowerAscii"
        | "upperAscii"
        | "trim"
        | "base64.decode"
        | "optional.of"
        | "optional.ofNonZeroValue"
        | "value"
        | "or"
        | "orValue" => {
            let work = match name {
                "indexOf" | "lastIndexOf" => 0.1 * mul(a.size, 1.0 + b.len),
                _ => linear,
            };
            (
                Approx {
                    size: total.max(1.0),
                    len: a.len.max(b.len),
                    int: a.len.max(a.int),
                },
                work,
            )
        }
        "jsonpatch.escapeKey" => (Approx::string(2.0 * a.len), 0.1 * total),
        _ => {
            // Parsers, predicates and accessors of the extension libraries (url, ip, cidr,
            // semver, quantity, named formats, math, timestamps, optionals): linear.
            (
                Approx {
                    size: 2.0 * total + 64.0,
                    len: 2.0 * total + 64.0,
                    int: f64::INFINITY,
                },
                10.0 + 0.4 * total + a.len,
            )
        }
    }
}

/// The largest decimal number written in a format text (widths, precisions), 0 if none.
fn largest_number(text: &str) -> f64 {
    let mut largest = 0.0f64;
    let mut current: Option<f64> = None;
    for c in text.chars() {
        match c.to_digit(10) {
            Some(d) => current = Some(current.unwrap_or(0.0) * 10.0 + f64::from(d)),
            None => {
                if let Some(n) = current.take() {
                    largest = largest.max(n);
                }
            }
        }
    }
    largest.max(current.unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_cel::cel::Program;
    use serde_json::json;

    fn cost(source: &str, object: Value) -> f64 {
        let program = Program::compile(source).expect(source);
        let Value::Object(map) = object else {
            panic!("object")
        };
        estimate(
            program.expression(),
            CelVar::Object,
            Binding::Object(Root::plain(&map)),
            &mut SizeMemo::default(),
        )
    }

    fn deployment(containers: usize) -> Value {
        let containers: Vec<Value> = (0..containers)
            .map(|i| json!({"name": format!("c{i}"), "image": "nginx:1.27",
                            "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80}]}))
            .collect();
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"replicas": 3, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn realistic_expressions_are_cheap() {
        let obj = deployment(3);
        for source in [
            "object.metadata.name.startsWith('prod-')",
            "object.spec.replicas <= 10",
            "object.spec.template.spec.containers.all(c, has(c.resources) && has(c.resources.limits))",
            "object.spec.template.spec.containers.all(c, c.ports.all(p, p.containerPort > 0))",
            "object.spec.template.spec.containers.map(c, c.image).exists(i, i.endsWith(':latest'))",
            "object.spec.template.spec.containers.exists_one(c, c.name == 'c1')",
            "object.spec.template.spec.containers.filter(c, c.name != 'x').size() == 3",
        ] {
            let c = cost(source, obj.clone());
            assert!(c < 10_000.0, "{source}: {c}");
        }
    }

    #[test]
    fn cost_grows_with_the_input() {
        let small = cost(
            "object.spec.template.spec.containers.all(c, c.name != '')",
            deployment(1),
        );
        let large = cost(
            "object.spec.template.spec.containers.all(c, c.name != '')",
            deployment(100),
        );
        assert!(large > 50.0 * small, "{small} {large}");
    }

    #[test]
    fn hostile_expressions_exceed_the_limit() {
        let list = format!(
            "[{}]",
            (0..200)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let nested = format!("{list}.all(x, {list}.all(y, {list}.all(z, x + y + z >= 0)))");
        assert!(cost(&nested, json!({})) > COST_LIMIT);
        let doubling = format!("'ab'{}.size() > 0", ".replace('a', 'aaaa')".repeat(12));
        assert!(cost(&doubling, json!({})) > COST_LIMIT);
        assert!(cost("lists.range(100000000).size() > 0", json!({})) > COST_LIMIT);
        assert!(cost("'%.99999999f'.format([1.0]) != ''", json!({})) > COST_LIMIT);
        // A large list in the object makes a quadratic map expensive.
        let items: Vec<Value> = (0..5000).map(|i| json!(i)).collect();
        let obj = json!({"spec": {"items": items}});
        assert!(cost("object.spec.items.map(x, x).size() > 0", obj.clone()) > COST_LIMIT);
        assert!(cost("object.spec.items.all(x, x >= 0)", obj) < COST_LIMIT);
    }

    #[test]
    fn every_macro_shape_is_recognised() {
        for source in [
            "[1].all(x, x > 0)",
            "[1].exists(x, x > 0)",
            "[1].exists_one(x, x > 0)",
            "[1].map(x, x + 1)",
            "[1].map(x, x > 0, x + 1)",
            "[1].filter(x, x > 0)",
            "{'a': 1}.all(k, k != '')",
        ] {
            assert!(cost(source, json!({})) < 100.0, "{source}");
        }
    }
}
