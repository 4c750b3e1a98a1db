//! A small path-tracking reader over `serde_json::Value`, so every validation error can say
//! exactly which field is wrong (`match.ports[1].to`). Absent and `null` fields read as `None`,
//! matching how upstream treats `undefined`.

use serde_json::{Map, Value};

/// A JSON value together with its field path.
#[derive(Clone, Copy)]
pub struct At<'v, 'p> {
    pub v: &'v Value,
    pub path: &'p str,
}

pub type ReadResult<T> = Result<T, String>;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'v, 'p> At<'v, 'p> {
    pub fn new(v: &'v Value, path: &'p str) -> Self {
        At { v, path }
    }

    pub fn err<T>(&self, msg: impl std::fmt::Display) -> ReadResult<T> {
        Err(format!("{}: {msg}", if self.path.is_empty() { "(root)" } else { self.path }))
    }

    pub fn expected<T>(&self, what: &str) -> ReadResult<T> {
        self.err(format!("expected {what}, got {}", short(self.v)))
    }

    pub fn obj(&self) -> ReadResult<&'v Map<String, Value>> {
        match self.v {
            Value::Object(m) => Ok(m),
            _ => self.expected("an object"),
        }
    }

    /// The raw child value, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'v Value> {
        match self.v {
            Value::Object(m) => m.get(key).filter(|v| !v.is_null()),
            _ => None,
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn str(&self) -> ReadResult<&'v str> {
        self.v.as_str().map_or_else(|| self.expected("a string"), Ok)
    }

    pub fn bool(&self) -> ReadResult<bool> {
        self.v.as_bool().map_or_else(|| self.expected("a boolean"), Ok)
    }

    pub fn num(&self) -> ReadResult<f64> {
        match self.v.as_f64() {
            Some(n) if n.is_finite() => Ok(n),
            _ => self.expected("a number"),
        }
    }

    pub fn non_negative(&self) -> ReadResult<f64> {
        let n = self.num()?;
        if n < 0.0 {
            return self.err(format!("must not be negative, got {n}"));
        }
        Ok(n)
    }

    /// A number in `0..=max`; `what` (" seconds", or "") names the unit in the message (a larger value is refused,
    /// never clamped, since it would overflow the durations and products built from it).
    pub fn at_most(&self, max: f64, what: &str) -> ReadResult<f64> {
        let n = self.non_negative()?;
        if n > max {
            return self.err(format!("must be at most {max}{what}, got {n}"));
        }
        Ok(n)
    }

    pub fn uint(&self) -> ReadResult<u64> {
        let n = self.non_negative()?;
        if n.fract() != 0.0 {
            return self.err(format!("must be a whole number, got {n}"));
        }
        Ok(n as u64)
    }

    pub fn port(&self) -> ReadResult<u16> {
        match self.v.as_f64() {
            Some(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(&n) => Ok(n as u16),
            _ => self.err(format!("port must be an integer 1-65535, got {}", short(self.v))),
        }
    }

    pub fn arr(&self) -> ReadResult<&'v Vec<Value>> {
        match self.v {
            Value::Array(a) => Ok(a),
            _ => self.expected("an array"),
        }
    }

    /// A string or an array of strings (upstream's `string | string[]`).
    pub fn str_or_strs(&self) -> ReadResult<Vec<&'v str>> {
        match self.v {
            Value::String(s) => Ok(vec![s.as_str()]),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map_or_else(|| Err(format!("{}[{i}]: expected a string, got {}", self.path, short(v))), Ok)
                })
                .collect(),
            _ => self.expected("a string or an array of strings"),
        }
    }

    /// Parses each string of a `string | string[]` value with `parse`; errors name the index
    /// (`match.domains[1]: …`).
    pub fn parse_each<T>(&self, parse: impl Fn(&str) -> Result<T, String>) -> ReadResult<Vec<T>> {
        self.str_or_strs()?
            .iter()
            .enumerate()
            .map(|(i, s)| parse(s).map_err(|e| format!("{}[{i}]: {e}", self.path)))
            .collect()
    }

    /// Whether this value is the facade's marker for a JavaScript function (`{"$fn": id}`).
    pub fn is_function(&self) -> bool {
        self.get("$fn").is_some()
    }
}

/// Reads the optional child `key` of `at` with `f`, building the child path.
pub fn opt<'v, T>(
    at: At<'v, '_>,
    key: &str,
    f: impl for<'p> FnOnce(At<'v, 'p>) -> ReadResult<T>,
) -> ReadResult<Option<T>> {
    match at.get(key) {
        None => Ok(None),
        Some(v) => {
            let p = join(at.path, key);
            f(At::new(v, &p)).map(Some)
        }
    }
}

/// Calls `f` for each element of the array `at`, with indexed paths.
pub fn each<'v, T>(at: At<'v, '_>, mut f: impl for<'p> FnMut(At<'v, 'p>) -> ReadResult<T>) -> ReadResult<Vec<T>> {
    at.arr()?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let p = format!("{}[{i}]", at.path);
            f(At::new(v, &p))
        })
        .collect()
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() <= 40 => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => type_name(other).to_owned(),
    }
}
