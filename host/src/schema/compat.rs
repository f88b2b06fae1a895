//! Whether what a writer schema allows fits a reader schema: every value
//! the writer may publish is one the reader accepts. The check is
//! structural and errs on the side of refusing: it proves a fit for the
//! keywords it knows (`type`, `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `const`, the numeric and
//! length bounds) and for any part where the two schemas are equal, and
//! names the first place it cannot (the consumer's JSON pointer, the
//! keyword, why). Writers are closed and readers open by convention
//! (`../shared/research/schemas.md`): adding an optional field to a closed
//! writer fits an open reader; renaming a field a reader requires does not.

use serde_json::{Map, Value};

/// Where a writer's events may not fit a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The JSON pointer of the place in the event (`""`: the root).
    pub pointer: String,
    /// The reader's keyword the writer may break.
    pub keyword: String,
    /// Why, in words.
    pub why: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = super::place(&self.pointer);
        write!(f, "`{}` at `{at}`: {}", self.keyword, self.why)
    }
}

/// Whether every value `writer` allows is one `reader` accepts; the first
/// place it cannot be shown otherwise.
pub fn fits(writer: &Value, reader: &Value) -> Result<(), Break> {
    at("", writer, reader)
}

fn broken(pointer: &str, keyword: &str, why: String) -> Result<(), Break> {
    Err(Break {
        pointer: pointer.to_string(),
        keyword: keyword.to_string(),
        why,
    })
}

/// The keywords that describe values (others, such as `title`, do not
/// constrain them).
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// The keywords this check knows how to compare.
const KNOWN: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
];

fn at(pointer: &str, writer: &Value, reader: &Value) -> Result<(), Break> {
    if writer == reader {
        return Ok(());
    }
    let (w, r) = match (writer, reader) {
        (_, Value::Bool(true)) => return Ok(()),
        (Value::Bool(false), _) => return Ok(()),
        (_, Value::Bool(false)) => {
            return broken(pointer, "false", "the reader accepts nothing here".into())
        }
        (Value::Bool(true), Value::Object(r)) if constrains(r) => {
            return broken(
                pointer,
                first_constraint(r),
                "the writer allows anything here".into(),
            )
        }
        (Value::Bool(true), _) => return Ok(()),
        (Value::Object(w), Value::Object(r)) => (w, r),
        _ => return broken(pointer, "type", "a schema is an object or a boolean".into()),
    };
    let unknown = |k: &str| !KNOWN.contains(&k) && !ANNOTATIONS.contains(&k);
    if let Some(keyword) = r
        .keys()
        .find(|k| unknown(k.as_str()) && w.get(*k) != r.get(*k))
    {
        return broken(
            pointer,
            keyword,
            "the reader uses a keyword this check cannot compare, and the writer's differs".into(),
        );
    }
    types(pointer, w, r)?;
    values(pointer, w, r)?;
    bounds(pointer, w, r)?;
    object(pointer, w, r)?;
    if let Some(ri) = r.get("items") {
        let wi = w.get("items").unwrap_or(&Value::Bool(true));
        at(&format!("{pointer}/0"), wi, ri)?;
    }
    Ok(())
}

fn constrains(r: &Map<String, Value>) -> bool {
    r.keys().any(|k| !ANNOTATIONS.contains(&k.as_str()))
}

fn first_constraint(r: &Map<String, Value>) -> &str {
    r.keys()
        .find(|k| !ANNOTATIONS.contains(&k.as_str()))
        .map_or("type", String::as_str)
}

/// The JSON types a schema's `type` allows (none: any).
fn type_set(s: &Map<String, Value>) -> Option<Vec<&str>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => Some(Vec::new()),
    }
}

fn types(pointer: &str, w: &Map<String, Value>, r: &Map<String, Value>) -> Result<(), Break> {
    let Some(reader) = type_set(r) else {
        return Ok(());
    };
    let Some(writer) = type_set(w) else {
        return broken(
            pointer,
            "type",
            format!(
                "the writer allows any type, the reader only {}",
                reader.join(" or ")
            ),
        );
    };
    for t in writer {
        let accepted = reader.contains(&t) || (t == "integer" && reader.contains(&"number"));
        if !accepted {
            return broken(
                pointer,
                "type",
                format!(
                    "the writer may send {t}, the reader accepts only {}",
                    reader.join(" or ")
                ),
            );
        }
    }
    Ok(())
}

/// `enum` and `const`: the writer's values are among the reader's.
fn values(pointer: &str, w: &Map<String, Value>, r: &Map<String, Value>) -> Result<(), Break> {
    let allowed = |s: &Map<String, Value>| -> Option<Vec<Value>> {
        match (s.get("const"), s.get("enum")) {
            (Some(c), _) => Some(vec![c.clone()]),
            (None, Some(Value::Array(e))) => Some(e.clone()),
            _ => None,
        }
    };
    let Some(reader) = allowed(r) else {
        return Ok(());
    };
    let keyword = if r.contains_key("const") {
        "const"
    } else {
        "enum"
    };
    match allowed(w) {
        None => broken(
            pointer,
            keyword,
            "the reader accepts only listed values; the writer lists none".into(),
        ),
        Some(writer) => match writer.iter().find(|v| !reader.contains(v)) {
            Some(v) => broken(
                pointer,
                keyword,
                format!("the writer may send {v}, which the reader does not list"),
            ),
            None => Ok(()),
        },
    }
}

/// Lower and upper bounds: the writer's are at least as tight.
fn bounds(pointer: &str, w: &Map<String, Value>, r: &Map<String, Value>) -> Result<(), Break> {
    let num = |s: &Map<String, Value>, k: &str| s.get(k).and_then(Value::as_f64);
    for (keyword, lower) in [
        ("minimum", true),
        ("exclusiveMinimum", true),
        ("minLength", true),
        ("minItems", true),
        ("maximum", false),
        ("exclusiveMaximum", false),
        ("maxLength", false),
        ("maxItems", false),
    ] {
        let Some(rb) = num(r, keyword) else {
            continue;
        };
        let tight = match num(w, keyword) {
            Some(wb) if lower => wb >= rb,
            Some(wb) => wb <= rb,
            None => false,
        };
        if !tight {
            return broken(
                pointer,
                keyword,
                format!(
                    "the reader wants {keyword} {rb}; the writer {}",
                    match num(w, keyword) {
                        Some(wb) => format!("allows {wb}"),
                        None => "does not bound it".into(),
                    }
                ),
            );
        }
    }
    Ok(())
}

fn names(s: &Map<String, Value>, k: &str) -> Vec<String> {
    match s.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `required`, `properties` and `additionalProperties`.
fn object(pointer: &str, w: &Map<String, Value>, r: &Map<String, Value>) -> Result<(), Break> {
    let w_required = names(w, "required");
    for field in names(r, "required") {
        if !w_required.contains(&field) {
            let why = if names(w, "properties").contains(&field) {
                format!("the reader requires `{field}`; the writer may leave it out")
            } else {
                format!("the reader requires `{field}`; the writer does not publish it")
            };
            return broken(&format!("{pointer}/{field}"), "required", why);
        }
    }
    let empty = Map::new();
    let r_props = r
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let w_props = w
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let w_extra = w.get("additionalProperties").unwrap_or(&Value::Bool(true));
    let r_extra = r.get("additionalProperties").unwrap_or(&Value::Bool(true));
    for (field, rs) in r_props {
        let here = format!("{pointer}/{field}");
        match w_props.get(field) {
            Some(ws) => at(&here, ws, rs)?,
            // Whatever the writer sends there, as an extra field.
            None => at(&here, w_extra, rs)?,
        }
    }
    // Fields the writer sends that the reader does not list meet the
    // reader's additionalProperties.
    for (field, ws) in w_props {
        if r_props.contains_key(field) {
            continue;
        }
        let here = format!("{pointer}/{field}");
        if r_extra == &Value::Bool(false) {
            return broken(
                &here,
                "additionalProperties",
                format!(
                    "the reader is closed and does not list `{field}`; the writer publishes it"
                ),
            );
        }
        at(&here, ws, r_extra)?;
    }
    // Fields neither lists: what the writer allows must fit the reader.
    if r_extra == &Value::Bool(false) && w_extra != &Value::Bool(false) {
        return broken(
            pointer,
            "additionalProperties",
            "the reader is closed; the writer may send fields it does not list".into(),
        );
    }
    at(&format!("{pointer}/*"), w_extra, r_extra)
}

#[cfg(test)]
mod tests;
