//! The minijinja environment that mimics transformers' chat-template sandbox: jinja2 settings
//! (`trim_blocks`, `lstrip_blocks`, lenient undefined), Python string/dict methods, and the
//! globals/filters HF adds (`raise_exception`, `tojson` with Python `json.dumps` formatting,
//! `strftime_now`). Also rewrites transformers' `{% generation %}` tags into sentinel
//! characters so that the spans of generation blocks can be recovered after rendering.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State, UndefinedBehavior};

use crate::data::date::Clock;

/// Emitted where a `{% generation %}` block starts.
pub const GEN_START: char = '\u{E000}';
/// Emitted where a `{% endgeneration %}` block ends.
pub const GEN_END: char = '\u{E001}';
/// Prefix that marks errors produced by `raise_exception`.
pub const RAISE_MARKER: &str = "\u{1}raise_exception\u{1}";
/// Name under which the chat template is registered in the environment.
pub const TEMPLATE_NAME: &str = "chat";

/// Result of [`rewrite_generation_tags`]: the rewritten source and whether any tag was found.
pub struct Rewritten {
    /// Template source with generation tags replaced.
    pub source: String,
    /// True when the template contains at least one `{% generation %}` tag.
    pub has_generation: bool,
}

/// Replaces `{%[-+] generation [-+]%}` / `{%[-+] endgeneration [-+]%}` by block tags that
/// print [`GEN_START`] / [`GEN_END`], keeping the original whitespace-control flags on the
/// outer edges so `trim_blocks`, `lstrip_blocks` and `-` trimming behave exactly as before.
/// Comments (`{# ... #}`) are copied verbatim.
pub fn rewrite_generation_tags(src: &str) -> Rewritten {
    let mut out = String::with_capacity(src.len() + 64);
    let mut has_generation = false;
    let mut rest = src;
    while let Some(pos) = rest.find(['{']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(body) = tail.strip_prefix("{#") {
            let end = body.find("#}").map_or(tail.len(), |e| e + 4);
            out.push_str(&tail[..end]);
            rest = &tail[end..];
            continue;
        }
        if let Some((len, name, left, right)) = parse_block_tag(tail) {
            let sentinel = match name {
                "generation" => Some(GEN_START),
                "endgeneration" => Some(GEN_END),
                _ => None,
            };
            if let Some(ch) = sentinel {
                has_generation = true;
                out.push_str(&format!("{{%{left} if true %}}{{{{ '{ch}' }}}}{{% endif {right}%}}"));
                rest = &tail[len..];
                continue;
            }
        }
        out.push('{');
        rest = &tail[1..];
    }
    out.push_str(rest);
    Rewritten { source: out, has_generation }
}

/// Parses `{%<flag>? name <flag>?%}` at the start of `s`; returns (byte length, name, left
/// flag, right flag). Only tags consisting of a single identifier are recognised.
fn parse_block_tag(s: &str) -> Option<(usize, &str, &str, &str)> {
    let body = s.strip_prefix("{%")?;
    let (left, body) = match body.chars().next() {
        Some(c @ ('-' | '+')) => (if c == '-' { "-" } else { "+" }, &body[1..]),
        _ => ("", body),
    };
    let trimmed = body.trim_start();
    let name_len = trimmed.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(trimmed.len());
    let name = &trimmed[..name_len];
    let after = trimmed[name_len..].trim_start();
    let (right, after) = match after.chars().next() {
        Some(c @ ('-' | '+')) => (if c == '-' { "-" } else { "+" }, &after[1..]),
        _ => ("", after),
    };
    let after = after.strip_prefix("%}")?;
    Some((s.len() - after.len(), name, left, right))
}

/// Builds the environment with the (already rewritten) template registered as
/// [`TEMPLATE_NAME`].
pub fn build_environment(source: String, clock: Clock) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(python_formatter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", move |fmt: String| clock.strftime(&fmt));
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

/// Prints values the way jinja2 does where minijinja differs: booleans as `True`/`False`
/// and none as `None` (undefined still prints as the empty string).
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        ValueKind::None => "None",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text).map_err(Error::from)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISE_MARKER}{message}")))
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, separators=separators,
/// sort_keys=sort_keys)`. Without `indent` the separators are `", "` and `": "` (Python's
/// defaults); with `indent` they are `","` and `": "`.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")),
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair of strings")),
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from_safe_string(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOpts, depth: usize) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v)?,
        ValueKind::String => write_string(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_items(out, opts, depth, '[', ']', items.len(), |out, i| write_json(out, &items[i], opts, depth + 1))?;
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                let key = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                pairs.push((key, val));
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_items(out, opts, depth, '{', '}', pairs.len(), |out, i| {
                write_string(out, &pairs[i].0, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, &pairs[i].1, opts, depth + 1)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: object of kind {kind} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn write_items(
    out: &mut String,
    opts: &JsonOpts,
    depth: usize,
    open: char,
    close: char,
    len: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len > 0 {
        for i in 0..len {
            if i > 0 {
                out.push_str(&opts.item_sep);
            }
            newline(out, opts, depth + 1);
            item(out, i)?;
        }
        newline(out, opts, depth);
    }
    out.push(close);
    Ok(())
}

/// Writes a number the way Python's `json.dumps` does (`float.__repr__` for floats).
fn write_number(out: &mut String, v: &Value) -> Result<(), Error> {
    if v.is_integer() {
        out.push_str(&v.to_string());
        return Ok(());
    }
    let f = f64::try_from(v.clone())?;
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        // Rust's Debug switches to exponent notation at the same thresholds as Python's
        // repr (< 1e-4 or >= 1e16); only the exponent spelling differs ("1e16" vs "1e+16").
        let s = format!("{f:?}");
        match s.split_once('e') {
            Some((mantissa, exp)) => {
                let (sign, digits) = match exp.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', exp),
                };
                out.push_str(&format!("{mantissa}e{sign}{digits:0>2}"));
            }
            None => out.push_str(&s),
        }
    }
    Ok(())
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
