//! The JSON shape of a topic's payloads, inferred from samples: a small
//! JSON Schema (`type`, `properties`, `required`, `items`) that every
//! sample fits. A field present in every object sample is `required`; a
//! value seen with several types lists them all. Depth is bounded.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Levels of nesting described; deeper values are described as any.
const DEPTH_MAX: usize = 12;

/// What the samples showed at one place in the document.
#[derive(Debug, Default)]
pub struct Shape {
    null: bool,
    boolean: bool,
    integer: bool,
    number: bool,
    string: bool,
    /// Arrays seen here: their elements' shape.
    items: Option<Box<Shape>>,
    /// Objects seen here: how many, and each field with the number of
    /// those objects that had it.
    objects: u64,
    fields: BTreeMap<String, (u64, Shape)>,
    /// Anything below [`DEPTH_MAX`].
    any: bool,
}

impl Shape {
    /// The shape of every value in `samples`.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Value>) -> Shape {
        let mut shape = Shape::default();
        for v in samples {
            shape.add(v, 0);
        }
        shape
    }

    fn add(&mut self, v: &Value, depth: usize) {
        if depth >= DEPTH_MAX {
            self.any = true;
            return;
        }
        match v {
            Value::Null => self.null = true,
            Value::Bool(_) => self.boolean = true,
            Value::Number(n) if n.is_i64() || n.is_u64() => self.integer = true,
            Value::Number(_) => self.number = true,
            Value::String(_) => self.string = true,
            Value::Array(items) => {
                let shape = self.items.get_or_insert_with(Box::default);
                for item in items {
                    shape.add(item, depth + 1);
                }
            }
            Value::Object(map) => {
                self.objects += 1;
                for (k, v) in map {
                    let (n, shape) = self.fields.entry(k.clone()).or_default();
                    *n += 1;
                    shape.add(v, depth + 1);
                }
            }
        }
    }

    /// As JSON Schema.
    pub fn schema(&self) -> Value {
        if self.any {
            return json!({});
        }
        let mut types: Vec<&str> = Vec::new();
        let mut out = serde_json::Map::new();
        if self.objects > 0 {
            types.push("object");
            let properties: serde_json::Map<String, Value> = self
                .fields
                .iter()
                .map(|(k, (_, s))| (k.clone(), s.schema()))
                .collect();
            let required: Vec<&String> = self
                .fields
                .iter()
                .filter(|(_, (n, _))| *n == self.objects)
                .map(|(k, _)| k)
                .collect();
            out.insert("properties".into(), Value::Object(properties));
            out.insert("required".into(), json!(required));
        }
        if let Some(items) = &self.items {
            types.push("array");
            out.insert("items".into(), items.schema());
        }
        for (seen, name) in [
            (self.string, "string"),
            (self.integer && !self.number, "integer"),
            (self.number, "number"),
            (self.boolean, "boolean"),
            (self.null, "null"),
        ] {
            if seen {
                types.push(name);
            }
        }
        match types.as_slice() {
            [] => {}
            [one] => {
                out.insert("type".into(), json!(one));
            }
            many => {
                out.insert("type".into(), json!(many));
            }
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_fields_are_those_every_sample_has() {
        let a = json!({"order_id": "o-1", "total_cents": 500, "items": [{"sku": "w", "qty": 1}]});
        let b = json!({"order_id": "o-2", "total_cents": 12.5, "items": [], "note": null});
        let schema = Shape::of([&a, &b]).schema();
        assert_eq!(schema["type"], "object");
        assert_eq!(
            schema["required"],
            json!(["items", "order_id", "total_cents"])
        );
        assert_eq!(schema["properties"]["order_id"]["type"], "string");
        assert_eq!(schema["properties"]["total_cents"]["type"], "number");
        assert_eq!(schema["properties"]["note"]["type"], "null");
        let item = &schema["properties"]["items"]["items"];
        assert_eq!(item["required"], json!(["qty", "sku"]));
        assert_eq!(item["properties"]["qty"]["type"], "integer");
    }

    #[test]
    fn mixed_and_deep_values_are_described_without_failing() {
        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        let schema = Shape::of([&json!("a"), &json!(3), &deep]).schema();
        assert_eq!(schema["type"], json!(["array", "string", "integer"]));
    }
}
