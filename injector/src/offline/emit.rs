//! Writes injected manifests as YAML that every reader takes the same way.
//!
//! kubectl reads YAML 1.1 (`no`, `on`, `y`, `0755`, `1_000` are booleans
//! and numbers there), most other tools read YAML 1.2, and serde_yaml only
//! quotes what YAML 1.2 would misread: Argo CD's `args: ["--appendonly",
//! "no"]` came out as `- no`, a boolean to kubectl. This writer quotes
//! every string that either version could read as anything but a string,
//! and otherwise keeps serde_yaml's layout (block style, sequences not
//! indented under their key, single quotes, literal blocks for multi-line
//! text), so the output reads as kubectl's own.

use serde_yaml::Value as Yaml;

/// One document, block style, ending in a newline.
pub(crate) fn to_string(doc: &Yaml) -> String {
    let mut out = String::new();
    match doc {
        Yaml::Mapping(m) if !m.is_empty() => write_mapping(&mut out, m, 0, false),
        Yaml::Sequence(s) if !s.is_empty() => write_sequence(&mut out, s, 0, false),
        Yaml::Tagged(t) => {
            out.push_str(&t.tag.to_string());
            write_after_tag(&mut out, &t.value, 0);
        }
        scalar => write_scalar(&mut out, scalar, 0),
    }
    out
}

/// Entries at column `indent`; the first on the current line when
/// `inline` (after a sequence's `- `).
fn write_mapping(out: &mut String, m: &serde_yaml::Mapping, indent: usize, inline: bool) {
    for (i, (key, value)) in m.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        write_key(out, key);
        out.push(':');
        match value {
            Yaml::Mapping(m) if !m.is_empty() => {
                out.push('\n');
                write_mapping(out, m, indent + 2, false);
            }
            // Not indented under the key, as kubectl writes it.
            Yaml::Sequence(s) if !s.is_empty() => {
                out.push('\n');
                write_sequence(out, s, indent, false);
            }
            Yaml::Tagged(t) => {
                out.push(' ');
                out.push_str(&t.tag.to_string());
                write_after_tag(out, &t.value, indent + 2);
            }
            scalar => {
                out.push(' ');
                write_scalar(out, scalar, indent + 2);
            }
        }
    }
}

/// Items with their `-` at column `indent`.
fn write_sequence(out: &mut String, s: &[Yaml], indent: usize, inline: bool) {
    for (i, item) in s.iter().enumerate() {
        if i > 0 || !inline {
            pad(out, indent);
        }
        out.push_str("- ");
        match item {
            Yaml::Mapping(m) if !m.is_empty() => write_mapping(out, m, indent + 2, true),
            Yaml::Sequence(s) if !s.is_empty() => write_sequence(out, s, indent + 2, true),
            Yaml::Tagged(t) => {
                out.push_str(&t.tag.to_string());
                write_after_tag(out, &t.value, indent + 2);
            }
            scalar => write_scalar(out, scalar, indent + 2),
        }
    }
}

/// A tagged node's value, the tag already written; collections go on the
/// following lines at `indent`.
fn write_after_tag(out: &mut String, value: &Yaml, indent: usize) {
    match value {
        Yaml::Mapping(m) if !m.is_empty() => {
            out.push('\n');
            write_mapping(out, m, indent, false);
        }
        Yaml::Sequence(s) if !s.is_empty() => {
            out.push('\n');
            write_sequence(out, s, indent, false);
        }
        scalar => {
            out.push(' ');
            write_scalar(out, scalar, indent);
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn write_key(out: &mut String, key: &Yaml) {
    match key {
        Yaml::String(s) if !s.contains('\n') => write_string(out, s),
        Yaml::Null | Yaml::Bool(_) | Yaml::Number(_) => {
            write_scalar(out, key, 0);
            out.pop();
        }
        // A collection (or multi-line text) as a key: one line of flow
        // style, which YAML allows for implicit keys.
        other => write_flow(out, other),
    }
}

/// A scalar (or an empty collection) and its line break; `indent` is where
/// a literal block's lines go.
fn write_scalar(out: &mut String, value: &Yaml, indent: usize) {
    match value {
        Yaml::Null => out.push_str("null"),
        Yaml::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Yaml::Number(n) => out.push_str(&n.to_string()),
        Yaml::String(s) if literal_allowed(s) => {
            write_literal(out, s, indent);
            return;
        }
        Yaml::String(s) => write_string(out, s),
        Yaml::Sequence(_) | Yaml::Mapping(_) | Yaml::Tagged(_) => write_flow(out, value),
    }
    out.push('\n');
}

/// Flow style on one line, strings always double-quoted (no flow
/// indicator inside them can then be misread).
fn write_flow(out: &mut String, value: &Yaml) {
    match value {
        Yaml::Sequence(s) => {
            out.push('[');
            for (i, item) in s.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_flow(out, item);
            }
            out.push(']');
        }
        Yaml::Mapping(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_flow(out, k);
                out.push_str(": ");
                write_flow(out, v);
            }
            out.push('}');
        }
        Yaml::Tagged(t) => {
            out.push_str(&t.tag.to_string());
            out.push(' ');
            write_flow(out, &t.value);
        }
        Yaml::String(s) => write_double_quoted(out, s),
        scalar => {
            write_scalar(out, scalar, 0);
            out.pop();
        }
    }
}

/// A single-line string: plain when no reader could take it for anything
/// else, single-quoted when it is printable, double-quoted otherwise.
fn write_string(out: &mut String, s: &str) {
    if plain_allowed(s) {
        out.push_str(s);
    } else if s.chars().all(printable) {
        out.push('\'');
        out.push_str(&s.replace('\'', "''"));
        out.push('\'');
    } else {
        write_double_quoted(out, s);
    }
}

fn write_double_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push_str(&format!("\\u{:04X}", c as u32)),
        }
    }
    out.push('"');
}

/// Multi-line text as a literal block (`|`), as serde_yaml writes it: a
/// shell script in `args` stays readable.
fn literal_allowed(s: &str) -> bool {
    let first = s.split('\n').find(|l| !l.is_empty());
    s.contains('\n')
        && s.chars().all(|c| c == '\n' || printable(c))
        // The first line's indentation would be taken as the block's.
        && first.is_some_and(|l| !l.starts_with(' '))
        // Lines of spaces before the first text would be read as
        // setting the indentation too.
        && s.split('\n').take_while(|l| l.trim().is_empty()).all(str::is_empty)
}

fn write_literal(out: &mut String, s: &str, indent: usize) {
    let body = s.strip_suffix('\n');
    out.push_str(match (body, body.is_some_and(|b| b.ends_with('\n'))) {
        (None, _) => "|-",
        (Some(_), false) => "|",
        (Some(_), true) => "|+",
    });
    out.push('\n');
    for line in body.unwrap_or(s).split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// What YAML can carry unescaped: no control characters, no byte order
/// mark, no Unicode line or paragraph separators.
fn printable(c: char) -> bool {
    !c.is_control() && !matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}')
}

/// Whether `s` can be written plain in block context and be read back as
/// the same string by a YAML 1.1 and a YAML 1.2 reader.
pub(crate) fn plain_allowed(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let second = s.chars().nth(1);
    let followed_by_space = second.is_none_or(|c| c == ' ');
    !(resolves_to_non_string(s)
        || !s.chars().all(|c| printable(c) && c != '\t')
        || s.starts_with(' ')
        || s.ends_with(' ')
        || "#,[]{}&*!|>'\"%@`".contains(first)
        || (matches!(first, '-' | '?' | ':') && followed_by_space)
        || s.starts_with("---")
        || s.starts_with("...")
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':'))
}

/// Whether a YAML 1.1 reader (the spec's types; kubectl's go-yaml v2;
/// PyYAML) or a YAML 1.2 reader could resolve the plain scalar `s` to a
/// null, boolean, number, timestamp, merge key or value key. Errs on the
/// side of quoting: a string quoted needlessly is still the same string.
pub(crate) fn resolves_to_non_string(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "", "~", "null", "y", "n", "yes", "no", "true", "false", "on", "off", "<<", "=",
    ];
    if WORDS.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return true;
    }
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    if [".inf", ".nan"]
        .iter()
        .any(|w| unsigned.eq_ignore_ascii_case(w))
    {
        return true;
    }
    // Integers with a base prefix: 0x1f, 0o17, 0b101 (and 1_000-style
    // underscores, which YAML 1.1 allows anywhere in a number).
    let lower = unsigned.to_ascii_lowercase();
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = lower.strip_prefix(prefix) {
            return digits.chars().all(|c| c == '_' || c.is_digit(radix));
        }
    }
    // Other numbers (0755, 1_000, 1.5e3, .5, sexagesimal 12:30 and
    // 1:30.5) and timestamps (2001-12-14, 2001-12-14t21:59:43.10-05:00,
    // 2001-12-14 21:59:43.10 -5) are made of these characters and start
    // with a digit or a dot.
    const NUMERIC: &str = "0123456789_:.+-eEtTzZ ";
    unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && s.chars().all(|c| NUMERIC.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(value: &Yaml) -> Yaml {
        serde_yaml::from_str(&to_string(value)).unwrap()
    }

    #[test]
    fn the_layout_is_serde_yamls() {
        let doc: Yaml = serde_yaml::from_str(
            "a: 1\nb: {c: [x, {d: e, f: [1, 2]}, [3, 4], [], {}]}\ng: null\nh: 0.5\n",
        )
        .unwrap();
        assert_eq!(to_string(&doc), serde_yaml::to_string(&doc).unwrap());
        assert_eq!(roundtrip(&doc), doc);
    }

    #[test]
    fn strings_any_reader_could_misread_are_quoted() {
        for s in [
            "no",
            "No",
            "NO",
            "yes",
            "on",
            "off",
            "y",
            "n",
            "Y",
            "N",
            "true",
            "null",
            "~",
            "",
            "=",
            "<<",
            "0755",
            "0x1F",
            "0b101",
            "0o17",
            "1_000",
            "12:30",
            "1:30.5",
            "1e3",
            "-1",
            "+1",
            ".5",
            "1.",
            ".inf",
            "-.Inf",
            ".NaN",
            "2.3.1",
            "2001-12-14",
            "2001-12-14t21:59:43.10-05:00",
            "- a",
            "-",
            "? a",
            ": a",
            "a: b",
            "a #b",
            "a:",
            "#a",
            "*a",
            "&a",
            "!a",
            "|",
            ">",
            "'a",
            "\"a",
            "%a",
            "@a",
            "`a",
            "{a}",
            "[a]",
            ",a",
            " a",
            "a ",
            "---",
            "...",
            "a\tb",
            "\u{7}",
            "\u{feff}",
        ] {
            let written = to_string(&Yaml::String(s.into()));
            assert!(
                written.starts_with(['\'', '"']),
                "{s:?} was written plain: {written}"
            );
            assert_eq!(
                roundtrip(&Yaml::String(s.into())),
                Yaml::String(s.into()),
                "{written}"
            );
        }
        for s in [
            "nginx",
            "--appendonly",
            "-sf",
            ":8080",
            "64Mi",
            "100m",
            "a:b",
            "a#b",
            "v1.2",
            "./run",
            "http://x.example/y?z=1",
            "yes-please",
            "é",
            "$(MESHD_POD_NAME)",
        ] {
            assert_eq!(to_string(&Yaml::String(s.into())), format!("{s}\n"));
        }
    }

    #[test]
    fn multi_line_text_is_a_literal_block() {
        for s in [
            "a\nb",
            "a\nb\n",
            "a\nb\n\n",
            "a\n\n  b\n",
            "\na",
            "a\n  \n",
            "#!/bin/sh\nset -e\n",
        ] {
            let doc: Yaml = serde_yaml::from_str("k: [x]").unwrap();
            let mut doc = doc;
            doc["k"] = Yaml::Sequence(vec![Yaml::String(s.into())]);
            let written = to_string(&doc);
            assert!(written.starts_with("k:\n- |"), "{s:?}: {written}");
            assert_eq!(roundtrip(&doc), doc, "{s:?}: {written}");
        }
        // A leading space or a line of spaces first would set the block's
        // indentation: double quotes instead.
        for s in [" a\nb", "  \na", "a\r\nb", "a\u{7}\nb"] {
            let written = to_string(&Yaml::String(s.into()));
            assert!(written.starts_with('"'), "{s:?}: {written}");
            assert_eq!(roundtrip(&Yaml::String(s.into())), Yaml::String(s.into()));
        }
    }

    #[test]
    fn keys_and_tags_are_written_so_they_read_back() {
        let doc: Yaml =
            serde_yaml::from_str("'on': 1\n? [a, b]\n: 2\n3: x\nt: !custom {a: 'no'}\nu: [!s 1]\n")
                .unwrap();
        let written = to_string(&doc);
        assert!(
            written.starts_with("'on': 1\n[\"a\", \"b\"]: 2\n3: x\n"),
            "{written}"
        );
        assert_eq!(roundtrip(&doc), doc, "{written}");
    }
}
