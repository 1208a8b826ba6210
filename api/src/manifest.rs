//! Bounds on a YAML text, checked before it is parsed: its size and how
//! deeply it nests. Shared by the file registry and `meshd inject`.
//!
//! The YAML parser (libyaml, under serde_yaml) spends time with the square
//! of the nesting depth before it gets to refuse anything: 200 KB of `[`
//! stalls it for seconds. Kubernetes manifests nest a dozen levels, so a
//! linear pre-scan refuses deep input in microseconds instead.
//!
//! The scan follows libyaml's tokenizer wherever that decides what counts
//! as nesting (quoted, plain and block scalars, comments, tags, flow and
//! block collections), so a bracket inside a string is not counted and
//! one outside a string cannot hide from it. Where the scan is unsure it
//! counts: refusing a strange file is cheaper than parsing a hostile one.

/// The largest YAML text read: 4 MiB, several times the largest manifests
/// Kubernetes itself accepts (the API server's request limit is 3 MiB).
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The deepest nesting accepted, counting flow collections (`[`, `{`) and
/// block collections (indentation) together. Pods nest about 10 levels.
pub const MAX_DEPTH: usize = 64;

/// Why a YAML text is refused before parsing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("is {bytes} bytes; accepted: at most {MAX_BYTES} bytes (4 MiB)")]
    TooLarge { bytes: u64 },
    #[error(
        "line {line}: nests more than {MAX_DEPTH} levels deep (`[`, `{{` or indentation); accepted: at most {MAX_DEPTH} levels"
    )]
    TooDeep { line: usize },
}

/// A UTF-8 byte order mark, which some Windows editors put at the start
/// of a file. YAML allows it; serde_yaml misreads it.
pub const BOM: char = '\u{feff}';

/// `text` without a leading byte order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix(BOM).unwrap_or(text)
}

/// Checks that `text` is at most [`MAX_BYTES`] long and nests at most
/// [`MAX_DEPTH`] levels deep. Linear in the length of `text`.
pub fn check(text: &str) -> Result<(), LimitError> {
    if text.len() > MAX_BYTES {
        return Err(LimitError::TooLarge {
            bytes: text.len() as u64,
        });
    }
    let mut scan = Scan::new(text.as_bytes());
    scan.run()
}

/// Where a simple key (`key:` without `?`) started, as libyaml tracks it.
#[derive(Clone, Copy, Debug)]
struct Mark {
    index: usize,
    line: usize,
    column: usize,
}

/// libyaml's scanner state, reduced to what decides nesting.
struct Scan<'a> {
    text: &'a [u8],
    index: usize,
    line: usize,
    /// In characters, as libyaml counts columns.
    column: usize,
    flow: usize,
    /// Columns of the open block collections, innermost last.
    indents: Vec<usize>,
    simple_key_allowed: bool,
    /// The possible simple key in block context (flow level 0): a `:`
    /// after it opens a block mapping at its column.
    key: Option<Mark>,
    /// The deepest flow nesting seen (for tests against libyaml).
    max_flow: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a [u8]) -> Self {
        Scan {
            text,
            index: 0,
            line: 0,
            column: 0,
            flow: 0,
            indents: Vec::new(),
            simple_key_allowed: true,
            key: None,
            max_flow: 0,
        }
    }

    fn at(&self, k: usize) -> u8 {
        self.text.get(self.index + k).copied().unwrap_or(0)
    }

    fn is_end(&self) -> bool {
        self.index >= self.text.len()
    }

    /// A line break at `k` bytes ahead: LF, CR, NEL, LS or PS.
    fn is_break_at(&self, k: usize) -> bool {
        match self.at(k) {
            b'\n' | b'\r' => true,
            0xC2 => self.at(k + 1) == 0x85,
            0xE2 => self.at(k + 1) == 0x80 && matches!(self.at(k + 2), 0xA8 | 0xA9),
            _ => false,
        }
    }

    fn is_blank_at(&self, k: usize) -> bool {
        matches!(self.at(k), b' ' | b'\t')
    }

    fn is_blankz_at(&self, k: usize) -> bool {
        self.index + k >= self.text.len() || self.is_blank_at(k) || self.is_break_at(k)
    }

    /// Moves past one character.
    fn skip(&mut self) {
        let len = match self.at(0) {
            b if b < 0x80 => 1,
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            _ => 2,
        };
        self.index = (self.index + len).min(self.text.len());
        self.column += 1;
    }

    /// Moves past one line break.
    fn skip_line(&mut self) {
        let len = match self.at(0) {
            b'\r' if self.at(1) == b'\n' => 2,
            b'\n' | b'\r' => 1,
            0xC2 => 2,
            _ => 3,
        };
        self.index = (self.index + len).min(self.text.len());
        self.line += 1;
        self.column = 0;
    }

    fn skip_to_break(&mut self) {
        while !self.is_end() && !self.is_break_at(0) {
            self.skip();
        }
    }

    fn at_document_marker(&self) -> bool {
        self.column == 0
            && (self.text[self.index..].starts_with(b"---")
                || self.text[self.index..].starts_with(b"..."))
            && self.is_blankz_at(3)
    }

    fn indent(&self) -> isize {
        self.indents.last().map_or(-1, |&c| c as isize)
    }

    fn check_depth(&self) -> Result<(), LimitError> {
        if self.flow + self.indents.len() > MAX_DEPTH {
            return Err(LimitError::TooDeep {
                line: self.line + 1,
            });
        }
        Ok(())
    }

    /// A block collection opens at `column` if it is deeper than the
    /// current one.
    fn roll_indent(&mut self, column: usize) -> Result<(), LimitError> {
        if self.flow == 0 && self.indent() < column as isize {
            self.indents.push(column);
            self.check_depth()?;
        }
        Ok(())
    }

    /// Block collections deeper than `column` end.
    fn unroll_indent(&mut self, column: isize) {
        if self.flow == 0 {
            while self.indent() > column {
                self.indents.pop();
            }
        }
    }

    fn save_simple_key(&mut self) {
        if self.flow == 0 && self.simple_key_allowed {
            self.key = Some(Mark {
                index: self.index,
                line: self.line,
                column: self.column,
            });
        }
    }

    fn remove_simple_key(&mut self) {
        if self.flow == 0 {
            self.key = None;
        }
    }

    /// Whitespace, comments and line breaks up to the next token.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.text[self.index..].starts_with("\u{feff}".as_bytes()) {
                self.skip();
            }
            while self.at(0) == b' '
                || (self.flow > 0 || !self.simple_key_allowed) && self.at(0) == b'\t'
            {
                self.skip();
            }
            if self.at(0) == b'#' {
                self.skip_to_break();
            }
            if self.is_end() || !self.is_break_at(0) {
                return;
            }
            self.skip_line();
            if self.flow == 0 {
                self.simple_key_allowed = true;
            }
        }
    }

    fn run(&mut self) -> Result<(), LimitError> {
        loop {
            self.skip_to_next_token();
            // A simple key must end on its line, within 1,024 characters.
            if let Some(key) = self.key
                && (key.line < self.line || key.index + 1024 < self.index)
            {
                self.key = None;
            }
            self.unroll_indent(self.column as isize);
            if self.is_end() {
                return Ok(());
            }
            let c = self.at(0);
            if self.column == 0 && c == b'%' {
                // A directive (`%YAML 1.2`): one line.
                self.unroll_indent(-1);
                self.remove_simple_key();
                self.simple_key_allowed = false;
                self.skip_to_break();
                continue;
            }
            if self.at_document_marker() {
                self.unroll_indent(-1);
                self.remove_simple_key();
                self.simple_key_allowed = false;
                self.skip();
                self.skip();
                self.skip();
                continue;
            }
            match c {
                b'[' | b'{' => {
                    self.save_simple_key();
                    self.flow += 1;
                    self.max_flow = self.max_flow.max(self.flow);
                    self.check_depth()?;
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b']' | b'}' => {
                    if self.flow == 0 {
                        self.remove_simple_key();
                    } else {
                        self.flow -= 1;
                    }
                    self.simple_key_allowed = false;
                    self.skip();
                }
                b',' => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'-' if self.is_blankz_at(1) => {
                    self.roll_indent(self.column)?;
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.skip();
                }
                b'?' if self.flow > 0 || self.is_blankz_at(1) => {
                    self.roll_indent(self.column)?;
                    self.remove_simple_key();
                    self.simple_key_allowed = self.flow == 0;
                    self.skip();
                }
                b':' if self.flow > 0 || self.is_blankz_at(1) => {
                    if self.flow == 0 {
                        match self.key.take() {
                            Some(key) => {
                                self.roll_indent(key.column)?;
                                self.simple_key_allowed = false;
                            }
                            None => {
                                self.roll_indent(self.column)?;
                                self.simple_key_allowed = true;
                            }
                        }
                    } else {
                        self.simple_key_allowed = false;
                    }
                    self.skip();
                }
                b'*' | b'&' => {
                    // An alias or anchor name.
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.skip();
                    while self.at(0).is_ascii_alphanumeric() || matches!(self.at(0), b'_' | b'-') {
                        self.skip();
                    }
                }
                b'!' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.tag();
                }
                b'|' | b'>' if self.flow == 0 => {
                    self.remove_simple_key();
                    self.simple_key_allowed = true;
                    self.block_scalar();
                }
                b'\'' | b'"' => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.quoted_scalar(c);
                }
                _ if self.starts_plain_scalar(c) => {
                    self.save_simple_key();
                    self.simple_key_allowed = false;
                    self.plain_scalar();
                }
                // libyaml stops here ("cannot start any token"): nothing
                // after it costs the parser anything, but counting on is
                // the safe side.
                _ => self.skip(),
            }
        }
    }

    fn starts_plain_scalar(&self, c: u8) -> bool {
        let indicator = matches!(
            c,
            b'-' | b'?'
                | b':'
                | b','
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'#'
                | b'&'
                | b'*'
                | b'!'
                | b'|'
                | b'>'
                | b'\''
                | b'"'
                | b'%'
                | b'@'
                | b'`'
        );
        !(self.is_blankz_at(0) || indicator)
            || c == b'-' && !self.is_blank_at(1)
            || self.flow == 0 && matches!(c, b'?' | b':') && !self.is_blankz_at(1)
    }

    /// `!tag`, `!!str`, `!<verbatim>`: brackets in a tag are not nesting.
    fn tag(&mut self) {
        let uri = |b: u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'-'
                        | b';'
                        | b'/'
                        | b'?'
                        | b':'
                        | b'@'
                        | b'&'
                        | b'='
                        | b'+'
                        | b'$'
                        | b'.'
                        | b'%'
                        | b'!'
                        | b'~'
                        | b'*'
                        | b'\''
                        | b'('
                        | b')'
                )
        };
        self.skip();
        if self.at(0) == b'<' {
            self.skip();
            while uri(self.at(0)) || matches!(self.at(0), b',' | b'[' | b']') {
                self.skip();
            }
            if self.at(0) == b'>' {
                self.skip();
            }
        } else {
            while uri(self.at(0)) {
                self.skip();
            }
        }
    }

    /// A single- or double-quoted scalar, over as many lines as it takes.
    fn quoted_scalar(&mut self, quote: u8) {
        self.skip();
        loop {
            // libyaml refuses a document marker or the end inside quotes.
            if self.at_document_marker() || self.is_end() {
                return;
            }
            while !self.is_blankz_at(0) {
                let c = self.at(0);
                if quote == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                    self.skip();
                    self.skip();
                } else if c == quote {
                    self.skip();
                    return;
                } else if quote == b'"' && c == b'\\' && self.is_break_at(1) {
                    self.skip();
                    self.skip_line();
                    break;
                } else if quote == b'"' && c == b'\\' {
                    self.skip();
                    if !self.is_end() {
                        self.skip();
                    }
                } else {
                    self.skip();
                }
            }
            while self.is_blank_at(0) || self.is_break_at(0) {
                if self.is_blank_at(0) {
                    self.skip();
                } else {
                    self.skip_line();
                }
            }
        }
    }

    /// A plain scalar: it ends at `: `, ` #`, (in flow context) at `,[]{}`,
    /// and at a line less indented than its block (in block context).
    fn plain_scalar(&mut self) {
        let indent = self.indent() + 1;
        let mut leading_blanks = false;
        loop {
            if self.at_document_marker() || self.at(0) == b'#' {
                break;
            }
            while !self.is_blankz_at(0) {
                let c = self.at(0);
                if c == b':' && self.is_blankz_at(1)
                    || self.flow > 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}')
                {
                    break;
                }
                // libyaml refuses `:` before a flow indicator in flow
                // context; stopping the scalar here counts what follows.
                if self.flow > 0
                    && c == b':'
                    && matches!(self.at(1), b',' | b'?' | b'[' | b']' | b'{' | b'}')
                {
                    break;
                }
                self.skip();
            }
            if !(self.is_blank_at(0) || self.is_break_at(0)) {
                break;
            }
            while self.is_blank_at(0) || self.is_break_at(0) {
                if self.is_blank_at(0) {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.flow == 0 && (self.column as isize) < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    /// A literal (`|`) or folded (`>`) block scalar: its header line, then
    /// every line indented at least as far as its first.
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.skip(),
                d @ b'1'..=b'9' if increment == 0 => {
                    increment = isize::from(d - b'0');
                    self.skip();
                }
                _ => break,
            }
        }
        while self.is_blank_at(0) {
            self.skip();
        }
        if self.at(0) == b'#' {
            self.skip_to_break();
        }
        if !self.is_break_at(0) {
            // libyaml refuses anything else on the header line.
            return;
        }
        self.skip_line();
        let parent = self.indent();
        let mut indent = if increment == 0 {
            0
        } else if parent >= 0 {
            parent + increment
        } else {
            increment
        };
        self.block_scalar_breaks(&mut indent, parent);
        while self.column as isize == indent && !self.is_end() {
            self.skip_to_break();
            if self.is_end() {
                break;
            }
            self.skip_line();
            self.block_scalar_breaks(&mut indent, parent);
        }
    }

    /// Empty lines and indentation inside a block scalar; the first
    /// content line sets the indentation when no indicator did.
    fn block_scalar_breaks(&mut self, indent: &mut isize, parent: isize) {
        let mut max_indent = 0;
        loop {
            while (*indent == 0 || (self.column as isize) < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column as isize);
            if !self.is_break_at(0) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(parent + 1).max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<usize> {
        match check(text) {
            Err(LimitError::TooDeep { line }) => Some(line),
            Err(e) => panic!("{e}"),
            Ok(()) => None,
        }
    }

    fn max_flow(text: &str) -> usize {
        let mut scan = Scan::new(text.as_bytes());
        scan.run().unwrap();
        scan.max_flow
    }

    #[test]
    fn deep_flow_nesting_is_refused_in_linear_time() {
        assert_eq!(depth_error(&"[".repeat(MAX_DEPTH)), None);
        assert_eq!(depth_error(&"[".repeat(MAX_DEPTH + 1)), Some(1));
        assert_eq!(depth_error(&"{a: ".repeat(100_000)), Some(1));
        assert_eq!(
            depth_error(&format!("kind: Pod\nspec: {}", "[".repeat(1_000_000))),
            Some(2)
        );
        let err = check(&"[".repeat(200_000)).unwrap_err().to_string();
        assert_eq!(
            err,
            "line 1: nests more than 64 levels deep (`[`, `{` or indentation); accepted: at most 64 levels"
        );
    }

    #[test]
    fn deep_block_nesting_is_refused() {
        let mut text = String::new();
        for level in 0..=MAX_DEPTH {
            text.push_str(&format!("{}a{level}:\n", " ".repeat(level)));
        }
        assert_eq!(depth_error(&text), Some(MAX_DEPTH + 1));
        assert_eq!(depth_error(&"- ".repeat(MAX_DEPTH + 1)), Some(1));
    }

    #[test]
    fn brackets_in_strings_comments_and_block_scalars_are_not_nesting() {
        let brackets = "[".repeat(MAX_DEPTH * 2);
        for text in [
            format!("a: '{brackets}'\n"),
            format!("a: \"{brackets}\"\n"),
            format!("a: \"x\n  {brackets}\n  y\"\n"),
            format!("a: 'it''s {brackets}'\n"),
            format!("a: b {brackets}\n"),
            format!("a: b\n  {brackets}\n"),
            format!("a: b # {brackets}\n"),
            format!("# {brackets}\n"),
            format!("a: |\n  {brackets}\n  {brackets}\nb: c\n"),
            format!("a: >-\n    {brackets}\n\n    x\n"),
            format!("a: !<tag:{brackets}> x\n"),
            format!("[a, \"{brackets}\", '{brackets}']\n"),
        ] {
            assert_eq!(depth_error(&text), None, "{text}");
        }
    }

    #[test]
    fn brackets_that_only_look_quoted_still_count() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        for text in [
            // Quotes inside a plain scalar are text, not quotes.
            format!("a: [it's, {deep}\n"),
            format!("a: [b \"c, {deep}\n"),
            // The plain scalar ends where the line is less indented.
            format!("a: b \"c\n{deep}\n"),
            // A block scalar ends at the first line less indented.
            format!("a: |\n  x\n{deep}\n"),
            // A comment needs whitespace before it.
            format!("a: [b#c, {deep}\n"),
            // A quote ends at the first unescaped quote.
            format!("a: [\"x\\\"\", {deep}\n"),
            format!("a: ['x''', {deep}\n"),
        ] {
            assert!(depth_error(&text).is_some(), "{text}");
        }
    }

    #[test]
    fn manifests_nest_as_they_look() {
        let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Pod","spec":{"containers":[{"name":"app"}]}}
spec:
  containers:
  - name: app
    env:
    - name: A
      valueFrom: {fieldRef: {fieldPath: "status.podIP"}}
    ports: [{containerPort: 8080}]
"#;
        assert_eq!(check(pod), Ok(()));
        assert_eq!(max_flow(pod), 2);
    }

    #[test]
    fn size_is_bounded() {
        assert_eq!(check(&" ".repeat(MAX_BYTES)), Ok(()));
        assert_eq!(
            check(&" ".repeat(MAX_BYTES + 1)),
            Err(LimitError::TooLarge {
                bytes: MAX_BYTES as u64 + 1
            })
        );
    }

    #[test]
    fn a_byte_order_mark_is_stripped() {
        assert_eq!(strip_bom("\u{feff}kind: Pod"), "kind: Pod");
        assert_eq!(strip_bom("kind: Pod"), "kind: Pod");
    }
}
