//! Executes a parsed template against a JSON value (the variables), as Go's `text/template`
//! does with `missingkey=error`.

use serde_json::Value;

use super::helpers::{self, strval, truth};
use super::parse::{Arg, Branch, Command, Node, Pipeline};

/// Most work one execution may do (nodes, commands, iterations), against runaway templates.
const MAX_STEPS: usize = 1_000_000;

/// Largest output of one execution, in bytes.
const MAX_OUTPUT: usize = 1 << 20;

/// An execution error at a byte offset of the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecError {
    pub(crate) pos: usize,
    pub(crate) kind: ExecErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExecErrorKind {
    /// A top-level variable (`.name` on the variables, `$.name`) that does not exist.
    MissingVariable(String),
    Other(String),
}

fn fail<T>(pos: usize, message: impl Into<String>) -> Result<T, ExecError> {
    Err(ExecError {
        pos,
        kind: ExecErrorKind::Other(message.into()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Normal,
    Break,
    Continue,
}

struct Exec<'a> {
    root: &'a Value,
    vars: Vec<(String, Value)>,
    out: String,
    steps: usize,
}

/// Runs a template; `root` is `.` and `$` at the start.
pub(crate) fn execute(nodes: &[Node], root: &Value) -> Result<String, ExecError> {
    let mut exec = Exec {
        root,
        vars: Vec::new(),
        out: String::new(),
        steps: 0,
    };
    exec.walk(nodes, root)?;
    Ok(exec.out)
}

impl<'a> Exec<'a> {
    fn step(&mut self, pos: usize) -> Result<(), ExecError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return fail(
                pos,
                format!("template execution took more than {MAX_STEPS} steps"),
            );
        }
        if self.out.len() > MAX_OUTPUT {
            return fail(
                pos,
                format!("template output is larger than {MAX_OUTPUT} bytes"),
            );
        }
        Ok(())
    }

    fn walk(&mut self, nodes: &[Node], dot: &Value) -> Result<Flow, ExecError> {
        for node in nodes {
            match node {
                Node::Text(text) => self.out.push_str(text),
                Node::Action(pipe) => {
                    self.step(pipe.pos)?;
                    let value = self.pipeline(pipe, dot)?;
                    if pipe.vars.is_empty() {
                        helpers::write_value(&mut self.out, &value);
                    }
                }
                Node::If(branch) => {
                    let flow = self.if_or_with(branch, dot, false)?;
                    if flow != Flow::Normal {
                        return Ok(flow);
                    }
                }
                Node::With(branch) => {
                    let flow = self.if_or_with(branch, dot, true)?;
                    if flow != Flow::Normal {
                        return Ok(flow);
                    }
                }
                Node::Range(branch) => self.range(branch, dot)?,
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn if_or_with(&mut self, branch: &Branch, dot: &Value, with: bool) -> Result<Flow, ExecError> {
        self.step(branch.pipe.pos)?;
        let mark = self.vars.len();
        let value = self.pipeline(&branch.pipe, dot)?;
        let flow = if truth(&value) {
            if with {
                self.walk(&branch.body, &value)?
            } else {
                self.walk(&branch.body, dot)?
            }
        } else {
            self.walk(&branch.otherwise, dot)?
        };
        self.vars.truncate(mark);
        Ok(flow)
    }

    fn range(&mut self, branch: &Branch, dot: &Value) -> Result<(), ExecError> {
        self.step(branch.pipe.pos)?;
        let pipe = &branch.pipe;
        let value = self.value(pipe, dot)?;
        let mark = self.vars.len();
        let items: Vec<(Value, Value)> = match &value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Value::from(i), v.clone()))
                .collect(),
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                keys.into_iter()
                    .map(|k| (Value::String(k.clone()), map[k.as_str()].clone()))
                    .collect()
            }
            Value::Number(n) if n.as_u64().is_some() => {
                if pipe.vars.len() > 1 {
                    return fail(
                        pipe.pos,
                        "can't use two variables when ranging over an integer",
                    );
                }
                let n = n.as_u64().unwrap_or(0);
                if n > MAX_STEPS as u64 {
                    return fail(pipe.pos, format!("range over {n} is too long"));
                }
                (0..n).map(|i| (Value::from(i), Value::from(i))).collect()
            }
            Value::Null => Vec::new(),
            other => {
                return fail(
                    pipe.pos,
                    format!("range can't iterate over {}", strval(other)),
                );
            }
        };
        if items.is_empty() {
            let flow = self.walk(&branch.otherwise, dot)?;
            self.vars.truncate(mark);
            // break/continue outside the loop body cannot occur (the parser checks).
            let _ = flow;
            return Ok(());
        }
        for (key, item) in items {
            self.step(pipe.pos)?;
            self.vars.truncate(mark);
            match pipe.vars.as_slice() {
                [] => {}
                [element] => self.vars.push((element.clone(), item.clone())),
                [index, element, ..] => {
                    self.vars.push((index.clone(), key));
                    self.vars.push((element.clone(), item.clone()));
                }
            }
            if self.walk(&branch.body, &item)? == Flow::Break {
                break;
            }
        }
        self.vars.truncate(mark);
        Ok(())
    }

    /// Evaluates a pipeline and declares or assigns its variables.
    fn pipeline(&mut self, pipe: &Pipeline, dot: &Value) -> Result<Value, ExecError> {
        let value = self.value(pipe, dot)?;
        if pipe.assign {
            for name in &pipe.vars {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => return fail(pipe.pos, format!("undefined variable {name}")),
                }
            }
        } else {
            for name in &pipe.vars {
                self.vars.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    /// The value of a pipeline's commands, without touching variables.
    fn value(&mut self, pipe: &Pipeline, dot: &Value) -> Result<Value, ExecError> {
        let mut value: Option<Value> = None;
        for cmd in &pipe.cmds {
            value = Some(self.command(cmd, dot, value)?);
        }
        Ok(value.unwrap_or(Value::Null))
    }

    fn command(
        &mut self,
        cmd: &Command,
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, ExecError> {
        self.step(cmd.pos)?;
        let Some(first) = cmd.args.first() else {
            return fail(cmd.pos, "empty command");
        };
        match first {
            Arg::Func { pos, name, func } => {
                let rest = &cmd.args[1..];
                match name.as_str() {
                    "and" | "or" => self.and_or(name == "and", *pos, rest, dot, piped),
                    _ => {
                        let mut args = Vec::with_capacity(rest.len() + 1);
                        for arg in rest {
                            args.push(self.arg(arg, dot)?);
                        }
                        args.extend(piped);
                        let value = func(&args).map_err(|message| ExecError {
                            pos: *pos,
                            kind: ExecErrorKind::Other(message),
                        })?;
                        if helpers::too_large(&value) {
                            return fail(
                                *pos,
                                format!(
                                    "{name}: result larger than {} bytes",
                                    helpers::MAX_VALUE_BYTES
                                ),
                            );
                        }
                        Ok(value)
                    }
                }
            }
            Arg::Nil { pos } => fail(*pos, "nil is not a command"),
            _ => {
                if cmd.args.len() > 1 || piped.is_some() {
                    return fail(
                        first.pos(),
                        "can't give arguments to a value that is not a function",
                    );
                }
                self.arg(first, dot)
            }
        }
    }

    /// Go's `and`/`or`: evaluate arguments in order and stop at the first false (`and`) or
    /// true (`or`) one, returning it; else the last.
    fn and_or(
        &mut self,
        and: bool,
        pos: usize,
        args: &[Arg],
        dot: &Value,
        piped: Option<Value>,
    ) -> Result<Value, ExecError> {
        let name = if and { "and" } else { "or" };
        if args.is_empty() && piped.is_none() {
            return fail(pos, format!("{name}: wants at least 1 argument, got 0"));
        }
        let mut last = Value::Null;
        for arg in args {
            last = self.arg(arg, dot)?;
            if truth(&last) != and {
                return Ok(last);
            }
        }
        Ok(piped.unwrap_or(last))
    }

    fn arg(&mut self, arg: &Arg, dot: &Value) -> Result<Value, ExecError> {
        match arg {
            Arg::Field { pos, names } => self.fields(dot, names, *pos, Some(*pos)),
            Arg::Variable { pos, name, names } => {
                let dots = Some(pos + name.len());
                if name == "$" {
                    let root = self.root;
                    return self.fields(root, names, *pos, dots);
                }
                let value = match self.vars.iter().rev().find(|(n, _)| n == name) {
                    Some((_, v)) => v.clone(),
                    None => return fail(*pos, format!("undefined variable {name}")),
                };
                self.fields(&value, names, *pos, dots)
            }
            Arg::Pipe { pipe, names } => {
                let value = self.pipeline(pipe, dot)?;
                self.fields(&value, names, pipe.pos, None)
            }
            Arg::Func { pos, name, func } => match name.as_str() {
                "and" | "or" => self.and_or(name == "and", *pos, &[], dot, None),
                _ => func(&[]).map_err(|message| ExecError {
                    pos: *pos,
                    kind: ExecErrorKind::Other(message),
                }),
            },
            Arg::Literal { value, .. } => Ok(value.clone()),
            Arg::Nil { .. } => Ok(Value::Null),
        }
    }

    /// Follows `.a.b.c` from `receiver`. `dots` is the offset of the first `.` when known,
    /// to point errors at the failing name.
    fn fields(
        &self,
        receiver: &Value,
        names: &[String],
        pos: usize,
        dots: Option<usize>,
    ) -> Result<Value, ExecError> {
        let mut current = receiver;
        let mut at = dots.unwrap_or(pos);
        for (i, name) in names.iter().enumerate() {
            let name_pos = if dots.is_some() { at } else { pos };
            match current {
                Value::Object(map) => match map.get(name) {
                    Some(value) => current = value,
                    None if i == 0 && std::ptr::eq(current, self.root) => {
                        return Err(ExecError {
                            pos: name_pos,
                            kind: ExecErrorKind::MissingVariable(name.clone()),
                        });
                    }
                    None => return fail(name_pos, format!("map has no entry for key {name:?}")),
                },
                Value::Null => {
                    return fail(name_pos, format!("nil pointer evaluating .{name}"));
                }
                other => {
                    return fail(
                        name_pos,
                        format!(
                            "can't evaluate field {name} in type {}",
                            helpers::type_name(other)
                        ),
                    );
                }
            }
            at += name.len() + 1;
        }
        Ok(current.clone())
    }
}
