//! Lexer for Go `text/template` syntax (delimiters `{{` `}}`, trim markers, comments).

use serde_json::Value;

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) kind: Tok,
    pub(crate) pos: usize,
    /// Whether white space comes right before the token (inside an action).
    pub(crate) spaced: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Text outside actions (already trimmed by trim markers).
    Text(String),
    LeftDelim,
    RightDelim,
    /// `.a.b`: field names.
    Field(Vec<String>),
    /// `$x.a.b`: variable name (with `$`) and field names.
    Variable(String, Vec<String>),
    Dot,
    Identifier(String),
    Keyword(Keyword),
    Bool(bool),
    Nil,
    /// A number or character constant.
    Number(Value),
    Str(String),
    LeftParen,
    RightParen,
    Pipe,
    Declare,
    Assign,
    Comma,
    Eof,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    If,
    Else,
    End,
    Range,
    With,
    Break,
    Continue,
    Define,
    Template,
    Block,
}

/// A lexing error at a byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub(crate) pos: usize,
    pub(crate) message: String,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    tokens: Vec<Token>,
    paren_depth: usize,
    /// Trim the white space at the start of the next text.
    trim_next_text: bool,
}

/// Splits a template into tokens.
pub(crate) fn lex(text: &str) -> Result<Vec<Token>, LexError> {
    let mut lexer = Lexer {
        text,
        pos: 0,
        tokens: Vec::new(),
        paren_depth: 0,
        trim_next_text: false,
    };
    lexer.run()?;
    Ok(lexer.tokens)
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn push(&mut self, kind: Tok, pos: usize, spaced: bool) {
        self.tokens.push(Token { kind, pos, spaced });
    }

    fn error<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, LexError> {
        Err(LexError {
            pos,
            message: message.into(),
        })
    }

    fn run(&mut self) -> Result<(), LexError> {
        loop {
            let start = self.pos;
            let next_delim = self.rest().find("{{").map(|i| self.pos + i);
            let end = next_delim.unwrap_or(self.text.len());
            let mut text = &self.text[start..end];
            if self.trim_next_text {
                text = text.trim_start_matches(is_space);
                self.trim_next_text = false;
            }
            let left_trim = next_delim.is_some_and(|d| has_left_trim(&self.text[d + 2..]));
            if left_trim {
                text = text.trim_end_matches(is_space);
            }
            if !text.is_empty() {
                let text_pos = end - text.len();
                self.push(Tok::Text(text.to_owned()), text_pos, false);
            }
            let Some(delim) = next_delim else {
                self.push(Tok::Eof, self.text.len(), false);
                return Ok(());
            };
            self.pos = delim + 2;
            if left_trim {
                self.pos += 2;
            }
            if self.rest().starts_with("/*") {
                self.comment(delim)?;
            } else {
                self.push(Tok::LeftDelim, delim, false);
                self.inside_action(delim)?;
            }
        }
    }

    fn comment(&mut self, delim: usize) -> Result<(), LexError> {
        let Some(close) = self.rest().find("*/") else {
            return self.error(delim, "unclosed comment");
        };
        self.pos += close + 2;
        match self.at_right_delim() {
            Some(trim) => {
                self.pos += if trim { 4 } else { 2 };
                self.trim_next_text = trim;
                Ok(())
            }
            None => self.error(delim, "comment ends before closing delimiter"),
        }
    }

    /// At `}}` (Some(false)) or ` -}}` (Some(true))?
    fn at_right_delim(&self) -> Option<bool> {
        let rest = self.rest();
        if rest.starts_with("}}") {
            return Some(false);
        }
        let mut chars = rest.chars();
        if chars.next().is_some_and(is_space) && chars.as_str().starts_with("-}}") {
            return Some(true);
        }
        None
    }

    fn inside_action(&mut self, delim: usize) -> Result<(), LexError> {
        let mut spaced = false;
        loop {
            if let Some(trim) = self.at_right_delim() {
                if self.paren_depth > 0 {
                    return self.error(self.pos, "unclosed left paren");
                }
                let pos = self.pos + usize::from(trim);
                self.pos += if trim { 4 } else { 2 };
                self.trim_next_text = trim;
                self.push(Tok::RightDelim, pos, spaced);
                return Ok(());
            }
            let start = self.pos;
            let Some(c) = self.rest().chars().next() else {
                return self.error(delim, "unclosed action");
            };
            if is_space(c) {
                self.pos += c.len_utf8();
                spaced = true;
                continue;
            }
            let token = match c {
                '=' => {
                    self.pos += 1;
                    Tok::Assign
                }
                ':' => {
                    if self.rest().starts_with(":=") {
                        self.pos += 2;
                        Tok::Declare
                    } else {
                        return self.error(start, "expected :=");
                    }
                }
                '|' => {
                    self.pos += 1;
                    Tok::Pipe
                }
                ',' => {
                    self.pos += 1;
                    Tok::Comma
                }
                '(' => {
                    self.pos += 1;
                    self.paren_depth += 1;
                    Tok::LeftParen
                }
                ')' => {
                    if self.paren_depth == 0 {
                        return self.error(start, "unexpected right paren");
                    }
                    self.pos += 1;
                    self.paren_depth -= 1;
                    Tok::RightParen
                }
                '"' => Tok::Str(self.quoted()?),
                '`' => Tok::Str(self.raw_quoted()?),
                '\'' => self.char_constant()?,
                '$' => {
                    self.pos += 1;
                    let name = format!("${}", self.word());
                    Tok::Variable(name, self.field_chain())
                }
                '.' => {
                    let next = self.rest()[1..].chars().next();
                    if next.is_some_and(|n| n.is_ascii_digit()) {
                        self.number()?
                    } else if next.is_some_and(is_alnum) {
                        Tok::Field(self.field_chain())
                    } else {
                        self.pos += 1;
                        Tok::Dot
                    }
                }
                '+' | '-' | '0'..='9' => self.number()?,
                c if is_alnum(c) => {
                    let word = self.word();
                    match word.as_str() {
                        "true" => Tok::Bool(true),
                        "false" => Tok::Bool(false),
                        "nil" => Tok::Nil,
                        "if" => Tok::Keyword(Keyword::If),
                        "else" => Tok::Keyword(Keyword::Else),
                        "end" => Tok::Keyword(Keyword::End),
                        "range" => Tok::Keyword(Keyword::Range),
                        "with" => Tok::Keyword(Keyword::With),
                        "break" => Tok::Keyword(Keyword::Break),
                        "continue" => Tok::Keyword(Keyword::Continue),
                        "define" => Tok::Keyword(Keyword::Define),
                        "template" => Tok::Keyword(Keyword::Template),
                        "block" => Tok::Keyword(Keyword::Block),
                        _ => Tok::Identifier(word),
                    }
                }
                other => {
                    return self.error(
                        start,
                        format!("unrecognized character in action: {other:?}"),
                    );
                }
            };
            self.push(token, start, spaced);
            spaced = false;
        }
    }

    /// Alphanumeric run at the current position.
    fn word(&mut self) -> String {
        let len = self
            .rest()
            .find(|c: char| !is_alnum(c))
            .unwrap_or(self.rest().len());
        let word = self.rest()[..len].to_owned();
        self.pos += len;
        word
    }

    /// `.a.b.c` at the current position (possibly none).
    fn field_chain(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        while self.rest().starts_with('.') && self.rest()[1..].starts_with(is_alnum) {
            self.pos += 1;
            names.push(self.word());
        }
        names
    }

    fn quoted(&mut self) -> Result<String, LexError> {
        let start = self.pos;
        self.pos += 1;
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.rest().chars().next() else {
                return self.error(start, "unterminated quoted string");
            };
            match c {
                '"' => {
                    self.pos += 1;
                    break;
                }
                '\n' => return self.error(start, "unterminated quoted string"),
                '\\' => {
                    let escape = self.pos;
                    self.pos += 1;
                    self.escape(b'"', &mut bytes).map_err(|message| LexError {
                        pos: escape,
                        message,
                    })?;
                }
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    self.pos += c.len_utf8();
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| LexError {
            pos: start,
            message: "string literal is not valid UTF-8".to_owned(),
        })
    }

    /// One escape sequence after a backslash (Go's `strconv.Unquote` rules).
    fn escape(&mut self, quote: u8, out: &mut Vec<u8>) -> Result<(), String> {
        let Some(c) = self.rest().chars().next() else {
            return Err("unterminated escape sequence".to_owned());
        };
        self.pos += c.len_utf8();
        let simple = match c {
            'a' => Some(7u8),
            'b' => Some(8),
            'f' => Some(12),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(11),
            '\\' => Some(b'\\'),
            '\'' | '"' if c as u32 == u32::from(quote) => Some(quote),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        let hex = |lexer: &mut Self, n: usize| -> Result<u32, String> {
            let digits = lexer.rest().get(..n).unwrap_or("");
            if digits.len() != n || !digits.chars().all(|d| d.is_ascii_hexdigit()) {
                return Err(format!("invalid escape \\{c}: expected {n} hex digits"));
            }
            let value = u32::from_str_radix(digits, 16).map_err(|e| e.to_string());
            lexer.pos += n;
            value
        };
        match c {
            'x' => {
                let b = hex(self, 2)?;
                out.push(u8::try_from(b).map_err(|e| e.to_string())?);
            }
            'u' | 'U' => {
                let code = hex(self, if c == 'u' { 4 } else { 8 })?;
                let ch = char::from_u32(code)
                    .ok_or_else(|| format!("invalid escape: {code:#x} is not a character"))?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            '0'..='7' => {
                let digits = self.text.get(self.pos - 1..self.pos + 2).unwrap_or("");
                if digits.len() != 3 || !digits.chars().all(|d| ('0'..='7').contains(&d)) {
                    return Err("invalid octal escape: expected 3 octal digits".to_owned());
                }
                self.pos += 2;
                let b = u32::from_str_radix(digits, 8).map_err(|e| e.to_string())?;
                out.push(u8::try_from(b).map_err(|_| "octal escape above \\377".to_owned())?);
            }
            other => return Err(format!("unknown escape sequence \\{other}")),
        }
        Ok(())
    }

    fn raw_quoted(&mut self) -> Result<String, LexError> {
        let start = self.pos;
        let Some(close) = self.rest()[1..].find('`') else {
            return self.error(start, "unterminated raw quoted string");
        };
        let s = self.rest()[1..=close].to_owned();
        self.pos += close + 2;
        Ok(s)
    }

    fn char_constant(&mut self) -> Result<Tok, LexError> {
        let start = self.pos;
        self.pos += 1;
        let mut bytes = Vec::new();
        match self.rest().chars().next() {
            None | Some('\n') | Some('\'') => {
                return self.error(start, "malformed character constant");
            }
            Some('\\') => {
                self.pos += 1;
                self.escape(b'\'', &mut bytes).map_err(|message| LexError {
                    pos: start,
                    message,
                })?;
            }
            Some(c) => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                self.pos += c.len_utf8();
            }
        }
        if !self.rest().starts_with('\'') {
            return self.error(start, "malformed character constant");
        }
        self.pos += 1;
        let code = match std::str::from_utf8(&bytes) {
            Ok(s) => s.chars().next().map_or(0, u32::from),
            Err(_) => bytes.first().map_or(0, |b| u32::from(*b)),
        };
        Ok(Tok::Number(Value::from(code)))
    }

    fn number(&mut self) -> Result<Tok, LexError> {
        let start = self.pos;
        let len = number_len(self.rest());
        let literal = &self.rest()[..len];
        let after = self.rest()[len..].chars().next();
        if len == 0 || after.is_some_and(|c| is_alnum(c) || c == '.') {
            let end = self.rest()[len..]
                .find(|c: char| !(is_alnum(c) || c == '.'))
                .map_or(self.text.len(), |i| self.pos + len + i);
            return self.error(
                start,
                format!("bad number syntax: {:?}", &self.text[start..end]),
            );
        }
        let value = parse_number(literal).ok_or_else(|| LexError {
            pos: start,
            message: format!("bad number syntax: {literal:?}"),
        })?;
        self.pos += len;
        Ok(Tok::Number(value))
    }
}

fn has_left_trim(after_delim: &str) -> bool {
    let mut chars = after_delim.chars();
    chars.next() == Some('-') && chars.next().is_some_and(is_space)
}

/// Length of the number literal at the start of `s` (Go syntax: sign, 0x/0o/0b prefixes,
/// `_` separators, fraction, exponent).
fn number_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let mut digits: &[u8] = b"0123456789_";
    let mut exponent: &[u8] = b"eE";
    if bytes.get(i) == Some(&b'0') {
        match bytes.get(i + 1) {
            Some(b'x' | b'X') => {
                i += 2;
                digits = b"0123456789abcdefABCDEF_";
                exponent = b"pP";
            }
            Some(b'o' | b'O') => {
                i += 2;
                digits = b"01234567_";
                exponent = b"";
            }
            Some(b'b' | b'B') => {
                i += 2;
                digits = b"01_";
                exponent = b"";
            }
            _ => {}
        }
    }
    while bytes.get(i).is_some_and(|b| digits.contains(b)) {
        i += 1;
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        while bytes.get(i).is_some_and(|b| digits.contains(b)) {
            i += 1;
        }
    }
    if bytes.get(i).is_some_and(|b| exponent.contains(b)) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        while bytes.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    let has_digit = s[..i].bytes().any(|b| b.is_ascii_digit());
    if has_digit { i } else { 0 }
}

/// The value of a Go number literal: an integer when it is one, else a float.
fn parse_number(literal: &str) -> Option<Value> {
    let (negative, body) = match literal.as_bytes().first() {
        Some(b'-') => (true, &literal[1..]),
        Some(b'+') => (false, &literal[1..]),
        _ => (false, literal),
    };
    let clean = body.replace('_', "");
    let lower = clean.to_ascii_lowercase();
    let integer = if let Some(hex) = lower.strip_prefix("0x") {
        (!hex.contains(['.', 'p'])).then(|| u64::from_str_radix(hex, 16).ok())?
    } else if let Some(oct) = lower.strip_prefix("0o") {
        u64::from_str_radix(oct, 8).ok()
    } else if let Some(bin) = lower.strip_prefix("0b") {
        u64::from_str_radix(bin, 2).ok()
    } else if lower.len() > 1 && lower.starts_with('0') && lower.bytes().all(|b| b.is_ascii_digit())
    {
        u64::from_str_radix(&lower[1..], 8).ok()
    } else if lower.bytes().all(|b| b.is_ascii_digit()) {
        lower.parse::<u64>().ok()
    } else {
        None
    };
    if let Some(n) = integer {
        return if negative {
            i64::try_from(n).ok().map(|n| Value::from(-n))
        } else {
            Some(Value::from(n))
        };
    }
    if lower.starts_with("0x") || lower.starts_with("0o") || lower.starts_with("0b") {
        return None;
    }
    let f: f64 = lower.parse().ok()?;
    let f = if negative { -f } else { f };
    serde_json::Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Tok> {
        lex(text)
            .expect("lexes")
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn text_actions_and_trim() {
        assert_eq!(
            kinds("a  {{- .x.y -}}  b"),
            vec![
                Tok::Text("a".into()),
                Tok::LeftDelim,
                Tok::Field(vec!["x".into(), "y".into()]),
                Tok::RightDelim,
                Tok::Text("b".into()),
                Tok::Eof
            ]
        );
        assert_eq!(kinds("{{/* c */}}x"), vec![Tok::Text("x".into()), Tok::Eof]);
        assert_eq!(
            kinds(" {{- /* c */ -}} x"),
            vec![Tok::Text("x".into()), Tok::Eof]
        );
        assert_eq!(kinds("{{-3}}")[1], Tok::Number(Value::from(-3)));
    }

    #[test]
    fn literals() {
        assert_eq!(
            kinds(r#"{{ "a\tb\x41\u00e9" `r\n` 'x' 0x1F 1.5 -2 1e3 017 nil true }}"#)[1..11],
            [
                Tok::Str("a\tbAé".into()),
                Tok::Str("r\\n".into()),
                Tok::Number(Value::from(120)),
                Tok::Number(Value::from(31)),
                Tok::Number(Value::from(1.5)),
                Tok::Number(Value::from(-2)),
                Tok::Number(Value::from(1000.0)),
                Tok::Number(Value::from(15)),
                Tok::Nil,
                Tok::Bool(true),
            ]
        );
    }

    #[test]
    fn errors() {
        for (text, message) in [
            ("{{ .x ", "unclosed action"),
            ("{{ \"abc }}", "unterminated quoted string"),
            ("{{ \"\\x4\" }}", "hex digits"),
            ("{{ \"\\q\" }}", "unknown escape"),
            ("{{ (.x }}", "unclosed left paren"),
            ("{{ .x) }}", "unexpected right paren"),
            ("{{ 12abc }}", "bad number syntax"),
            ("{{ # }}", "unrecognized character"),
            ("{{/* x ", "unclosed comment"),
            ("{{/* x */ }}", "comment ends before closing delimiter"),
        ] {
            let err = lex(text).expect_err(text);
            assert!(err.message.contains(message), "{text}: {err:?}");
        }
    }
}
