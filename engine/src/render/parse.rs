//! Parser for Go `text/template`: tokens → a tree of nodes, checking function names and
//! variables as Go does.

use serde_json::Value;

use super::helpers::{self, Func};
use super::lex::{Keyword, Tok, Token, lex};

/// Deepest nesting of blocks and parentheses accepted (the parser and executor recurse).
pub(crate) const MAX_NESTING: usize = 64;

/// A parse error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) pos: usize,
    pub(crate) message: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Text(String),
    /// `{{ pipeline }}`: printed unless it declares variables.
    Action(Pipeline),
    If(Branch),
    With(Branch),
    Range(Branch),
    Break,
    Continue,
}

/// `if`, `with`, `range`: the pipeline, the body and the `else` part.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub(crate) pipe: Pipeline,
    pub(crate) body: Vec<Node>,
    pub(crate) otherwise: Vec<Node>,
}

#[derive(Debug, Clone)]
pub(crate) struct Pipeline {
    pub(crate) pos: usize,
    /// Variables declared (`$x :=`) or assigned (`$x =`).
    pub(crate) vars: Vec<String>,
    pub(crate) assign: bool,
    pub(crate) cmds: Vec<Command>,
}

#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) pos: usize,
    pub(crate) args: Vec<Arg>,
}

#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// `.a.b` (empty names: `.`).
    Field {
        pos: usize,
        names: Vec<String>,
    },
    /// `$x.a.b`.
    Variable {
        pos: usize,
        name: String,
        names: Vec<String>,
    },
    /// `(pipeline).a.b`.
    Pipe {
        pipe: Box<Pipeline>,
        names: Vec<String>,
    },
    Func {
        pos: usize,
        name: String,
        func: Func,
    },
    Literal {
        pos: usize,
        value: Value,
    },
    Nil {
        pos: usize,
    },
}

impl Arg {
    pub(crate) fn pos(&self) -> usize {
        match self {
            Arg::Field { pos, .. }
            | Arg::Variable { pos, .. }
            | Arg::Func { pos, .. }
            | Arg::Literal { pos, .. }
            | Arg::Nil { pos } => *pos,
            Arg::Pipe { pipe, .. } => pipe.pos,
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
}

type Result<T> = std::result::Result<T, ParseError>;

/// Parses a template.
pub(crate) fn parse(text: &str) -> Result<Vec<Node>> {
    let tokens = lex(text).map_err(|e| ParseError {
        pos: e.pos,
        message: e.message,
    })?;
    let mut parser = Parser {
        tokens,
        next: 0,
        vars: vec!["$".to_owned()],
        range_depth: 0,
        depth: 0,
    };
    let (nodes, end) = parser.list()?;
    match end {
        Stop::Eof => Ok(nodes),
        Stop::Else(pos) => parser.error(pos, "unexpected {{else}}"),
        Stop::End(pos) => parser.error(pos, "unexpected {{end}}"),
    }
}

/// What ended a list of nodes.
enum Stop {
    Eof,
    Else(usize),
    End(usize),
}

impl Parser {
    fn error<T>(&self, pos: usize, message: impl Into<String>) -> Result<T> {
        Err(ParseError {
            pos,
            message: message.into(),
        })
    }

    fn peek(&self) -> &Token {
        // The lexer always ends with Eof and the parser never moves past it.
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.next < self.tokens.len() - 1 {
            self.next += 1;
        }
        token
    }

    fn expect_right_delim(&mut self, context: &str) -> Result<()> {
        let token = self.advance();
        if token.kind == Tok::RightDelim {
            Ok(())
        } else {
            self.error(
                token.pos,
                format!("unexpected {} in {context}", describe(&token.kind)),
            )
        }
    }

    fn enter(&mut self, pos: usize) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.error(
                pos,
                format!("template nests deeper than {MAX_NESTING} levels"),
            );
        }
        Ok(())
    }

    /// Nodes up to EOF, `{{else}}` or `{{end}}`.
    fn list(&mut self) -> Result<(Vec<Node>, Stop)> {
        let mut nodes = Vec::new();
        loop {
            let token = self.advance();
            match token.kind {
                Tok::Eof => return Ok((nodes, Stop::Eof)),
                Tok::Text(text) => nodes.push(Node::Text(text)),
                Tok::LeftDelim => {
                    let keyword = match &self.peek().kind {
                        Tok::Keyword(k) => Some(*k),
                        _ => None,
                    };
                    let pos = self.peek().pos;
                    match keyword {
                        Some(Keyword::Else) => {
                            self.advance();
                            return Ok((nodes, Stop::Else(pos)));
                        }
                        Some(Keyword::End) => {
                            self.advance();
                            self.expect_right_delim("end")?;
                            return Ok((nodes, Stop::End(pos)));
                        }
                        Some(Keyword::If) => {
                            self.advance();
                            nodes.push(Node::If(self.branch(Keyword::If, pos)?));
                        }
                        Some(Keyword::With) => {
                            self.advance();
                            nodes.push(Node::With(self.branch(Keyword::With, pos)?));
                        }
                        Some(Keyword::Range) => {
                            self.advance();
                            self.range_depth += 1;
                            let branch = self.branch(Keyword::Range, pos);
                            self.range_depth -= 1;
                            nodes.push(Node::Range(branch?));
                        }
                        Some(k @ (Keyword::Break | Keyword::Continue)) => {
                            self.advance();
                            let name = if k == Keyword::Break {
                                "break"
                            } else {
                                "continue"
                            };
                            if self.range_depth == 0 {
                                return self
                                    .error(pos, format!("{{{{{name}}}}} outside {{{{range}}}}"));
                            }
                            self.expect_right_delim(name)?;
                            nodes.push(if k == Keyword::Break {
                                Node::Break
                            } else {
                                Node::Continue
                            });
                        }
                        Some(k @ (Keyword::Define | Keyword::Template | Keyword::Block)) => {
                            let name = match k {
                                Keyword::Define => "define",
                                Keyword::Template => "template",
                                _ => "block",
                            };
                            return self
                                .error(pos, format!("{{{{{name}}}}} actions are not supported"));
                        }
                        None => {
                            let pipe = self.pipeline("command", false)?;
                            nodes.push(Node::Action(pipe));
                        }
                    }
                }
                other => {
                    return self.error(token.pos, format!("unexpected {}", describe(&other)));
                }
            }
        }
    }

    /// `if`/`with`/`range` after the keyword: pipeline, body, optional else, end.
    fn branch(&mut self, kind: Keyword, pos: usize) -> Result<Branch> {
        self.enter(pos)?;
        let saved_vars = self.vars.len();
        let context = match kind {
            Keyword::If => "if",
            Keyword::With => "with",
            _ => "range",
        };
        let pipe = self.pipeline(context, kind == Keyword::Range)?;
        let (body, end) = self.list()?;
        let otherwise = match end {
            Stop::Eof => {
                return self.error(
                    pos,
                    format!("unexpected EOF: {{{{{context}}}}} without {{{{end}}}}"),
                );
            }
            Stop::End(_) => Vec::new(),
            Stop::Else(else_pos) => {
                // `{{else if …}}` / `{{else with …}}` chain into a nested branch that shares
                // the final {{end}}.
                let chained = match (&self.peek().kind, kind) {
                    (Tok::Keyword(Keyword::If), Keyword::If) => Some(Keyword::If),
                    (Tok::Keyword(Keyword::With), Keyword::With) => Some(Keyword::With),
                    _ => None,
                };
                if let Some(chained) = chained {
                    let nested_pos = self.advance().pos;
                    let nested = self.branch(chained, nested_pos)?;
                    vec![if chained == Keyword::If {
                        Node::If(nested)
                    } else {
                        Node::With(nested)
                    }]
                } else {
                    self.expect_right_delim("else")?;
                    let (otherwise, end) = self.list()?;
                    match end {
                        Stop::End(_) => otherwise,
                        Stop::Else(p) => {
                            return self.error(p, "expected {{end}}, found a second {{else}}");
                        }
                        Stop::Eof => {
                            return self.error(
                                else_pos,
                                format!("unexpected EOF: {{{{{context}}}}} without {{{{end}}}}"),
                            );
                        }
                    }
                }
            }
        };
        self.vars.truncate(saved_vars);
        self.depth -= 1;
        Ok(Branch {
            pipe,
            body,
            otherwise,
        })
    }

    /// A pipeline up to `}}` (consumed) or `)` (not consumed, when inside parentheses).
    fn pipeline(&mut self, context: &str, in_range: bool) -> Result<Pipeline> {
        let pos = self.peek().pos;
        let mut pipe = Pipeline {
            pos,
            vars: Vec::new(),
            assign: false,
            cmds: Vec::new(),
        };
        self.declarations(&mut pipe, in_range)?;
        loop {
            let token = self.peek().clone();
            match token.kind {
                Tok::RightDelim => {
                    self.advance();
                    break;
                }
                Tok::RightParen => break,
                _ => {
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                    if self.peek().kind == Tok::Pipe {
                        let bar = self.advance();
                        if matches!(
                            self.peek().kind,
                            Tok::RightDelim | Tok::RightParen | Tok::Pipe
                        ) {
                            return self.error(bar.pos, "missing command after |");
                        }
                    }
                }
            }
        }
        if pipe.cmds.is_empty() {
            return self.error(pos, format!("missing value for {context}"));
        }
        for (i, cmd) in pipe.cmds.iter().enumerate().skip(1) {
            if let Some(Arg::Literal { pos, .. } | Arg::Nil { pos }) = cmd.args.first() {
                return self.error(
                    *pos,
                    format!("non executable command in pipeline stage {}", i + 1),
                );
            }
        }
        // Declared variables are visible after the pipeline (and in the block it opens).
        if !pipe.assign {
            self.vars.extend(pipe.vars.iter().cloned());
        }
        Ok(pipe)
    }

    /// `$x :=`, `$x =`, or (range only) `$i, $v :=` at the start of a pipeline.
    fn declarations(&mut self, pipe: &mut Pipeline, in_range: bool) -> Result<()> {
        let start = self.next;
        let mut names = Vec::new();
        while let Token {
            kind: Tok::Variable(name, fields),
            pos,
            ..
        } = self.peek().clone()
        {
            if !fields.is_empty() {
                break;
            }
            self.advance();
            names.push((name, pos));
            match self.peek().kind {
                Tok::Comma if in_range && names.len() == 1 => {
                    self.advance();
                }
                Tok::Declare | Tok::Assign => {
                    let assign = self.advance().kind == Tok::Assign;
                    if assign {
                        for (name, pos) in &names {
                            if !self.vars.contains(name) {
                                return self.error(*pos, format!("undefined variable {name}"));
                            }
                        }
                    }
                    pipe.assign = assign;
                    pipe.vars = names.into_iter().map(|(n, _)| n).collect();
                    return Ok(());
                }
                _ => break,
            }
        }
        // Not a declaration: start again at the first token.
        self.next = start;
        Ok(())
    }

    /// Operands up to `|`, `}}` or `)`.
    fn command(&mut self) -> Result<Command> {
        let pos = self.peek().pos;
        let mut args = Vec::new();
        loop {
            match self.peek().kind {
                Tok::Pipe | Tok::RightDelim | Tok::RightParen => break,
                _ => {
                    if !args.is_empty() && !self.peek().spaced {
                        let token = self.peek().clone();
                        return self.error(
                            token.pos,
                            format!("unexpected {} in operand", describe(&token.kind)),
                        );
                    }
                    args.push(self.operand()?);
                }
            }
        }
        if args.is_empty() {
            return self.error(pos, "empty command");
        }
        Ok(Command { pos, args })
    }

    /// A term, optionally followed by a field chain (`(…).a.b`).
    fn operand(&mut self) -> Result<Arg> {
        let arg = self.term()?;
        let next = self.peek().clone();
        if let Tok::Field(names) = next.kind
            && !next.spaced
        {
            self.advance();
            return match arg {
                Arg::Pipe {
                    pipe,
                    names: mut chain,
                } => {
                    chain.extend(names);
                    Ok(Arg::Pipe { pipe, names: chain })
                }
                Arg::Field {
                    pos,
                    names: mut chain,
                } => {
                    chain.extend(names);
                    Ok(Arg::Field { pos, names: chain })
                }
                Arg::Variable {
                    pos,
                    name,
                    names: mut chain,
                } => {
                    chain.extend(names);
                    Ok(Arg::Variable {
                        pos,
                        name,
                        names: chain,
                    })
                }
                other => self.error(other.pos(), "unexpected . after term"),
            };
        }
        Ok(arg)
    }

    fn term(&mut self) -> Result<Arg> {
        let token = self.advance();
        let pos = token.pos;
        Ok(match token.kind {
            Tok::Identifier(name) => match helpers::lookup(&name) {
                Some(func) => Arg::Func { pos, name, func },
                None => return self.error(pos, format!("function {name} not defined")),
            },
            Tok::Dot => Arg::Field {
                pos,
                names: Vec::new(),
            },
            Tok::Field(names) => Arg::Field { pos, names },
            Tok::Variable(name, names) => {
                if !self.vars.contains(&name) {
                    return self.error(pos, format!("undefined variable {name}"));
                }
                Arg::Variable { pos, name, names }
            }
            Tok::Nil => Arg::Nil { pos },
            Tok::Bool(b) => Arg::Literal {
                pos,
                value: Value::Bool(b),
            },
            Tok::Number(value) => Arg::Literal { pos, value },
            Tok::Str(s) => Arg::Literal {
                pos,
                value: Value::String(s),
            },
            Tok::LeftParen => {
                self.enter(pos)?;
                let pipe = self.pipeline("parenthesized pipeline", false)?;
                let close = self.advance();
                if close.kind != Tok::RightParen {
                    return self.error(close.pos, "unclosed left paren");
                }
                self.depth -= 1;
                Arg::Pipe {
                    pipe: Box::new(pipe),
                    names: Vec::new(),
                }
            }
            other => {
                return self.error(pos, format!("unexpected {} in operand", describe(&other)));
            }
        })
    }
}

fn describe(token: &Tok) -> String {
    match token {
        Tok::Text(_) => "text".to_owned(),
        Tok::LeftDelim => "{{".to_owned(),
        Tok::RightDelim => "}}".to_owned(),
        Tok::Field(names) => format!(".{}", names.join(".")),
        Tok::Variable(name, names) if names.is_empty() => name.clone(),
        Tok::Variable(name, names) => format!("{name}.{}", names.join(".")),
        Tok::Dot => ".".to_owned(),
        Tok::Identifier(name) => name.clone(),
        Tok::Keyword(k) => format!("{{{{{}}}}}", format!("{k:?}").to_lowercase()),
        Tok::Bool(b) => b.to_string(),
        Tok::Nil => "nil".to_owned(),
        Tok::Number(n) => n.to_string(),
        Tok::Str(s) => format!("{s:?}"),
        Tok::LeftParen => "(".to_owned(),
        Tok::RightParen => ")".to_owned(),
        Tok::Pipe => "|".to_owned(),
        Tok::Declare => ":=".to_owned(),
        Tok::Assign => "=".to_owned(),
        Tok::Comma => ",".to_owned(),
        Tok::Eof => "end of text".to_owned(),
    }
}
