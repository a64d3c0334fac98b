//! Option values: what a definition gives and what merging makes, and
//! their conversions to and from Rust types.

use std::collections::BTreeMap;
use std::fmt;

use crate::drv::{Drv, Output, Str};

/// A value of an option, or part of one.
///
/// Strings keep their context ([`Str`]), so a path to a package written
/// into an option still declares the package; a package itself is kept
/// as the typed [`Drv`].
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Value {
    /// No value (`null`): what an unset `types::optional` holds.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string, with the outputs it names.
    Str(Str),
    /// A package.
    Package(Drv),
    /// One output of a package (`dev`, `doc`, …).
    Output(Output),
    /// A list.
    List(Vec<Value>),
    /// A map by string key (also a submodule's fields).
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// What kind of value it is, for messages: `an integer`, `a list`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Str(_) => "a string",
            Value::Package(_) => "a package",
            Value::Output(_) => "a package output",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }

    /// The value as JSON: strings lose their context, a package becomes
    /// its output path.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Str(s) => J::String(s.as_str().to_owned()),
            Value::Package(d) => J::String(crate::text!("{}", d).as_str().to_owned()),
            Value::Output(o) => J::String(crate::text!("{}", o).as_str().to_owned()),
            Value::List(l) => J::Array(l.iter().map(Value::to_json).collect()),
            Value::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// A value from JSON. Floats are not option values (no option type
    /// takes one): they are refused, naming the number.
    pub fn from_json(j: &serde_json::Value) -> Result<Value, String> {
        use serde_json::Value as J;
        Ok(match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Int(
                n.as_i64()
                    .ok_or_else(|| format!("`{n}` is not an integer that fits in 64 bits"))?,
            ),
            J::String(s) => Value::Str(Str::from(s.as_str())),
            J::Array(a) => Value::List(a.iter().map(Value::from_json).collect::<Result<_, _>>()?),
            J::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), Value::from_json(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }

    /// A value from TOML. Floats and dates are refused, as in
    /// [`Value::from_json`].
    pub fn from_toml(t: &toml::Value) -> Result<Value, String> {
        use toml::Value as T;
        Ok(match t {
            T::Boolean(b) => Value::Bool(*b),
            T::Integer(i) => Value::Int(*i),
            T::String(s) => Value::Str(Str::from(s.as_str())),
            T::Float(f) => return Err(format!("`{f}` is a float; no option takes one")),
            T::Datetime(d) => return Err(format!("`{d}` is a date; write it as a string")),
            T::Array(a) => Value::List(a.iter().map(Value::from_toml).collect::<Result<_, _>>()?),
            T::Table(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| Ok((k.clone(), Value::from_toml(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }

    /// Any serializable Rust value (through its JSON form).
    pub fn from_serde<T: serde::Serialize + ?Sized>(v: &T) -> Result<Value, String> {
        let j = serde_json::to_value(v).map_err(|e| e.to_string())?;
        Value::from_json(&j)
    }
}

/// Short and stable: how errors and the definition query print values.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{:?}", s.as_str()),
            Value::Package(d) => write!(f, "<package {}>", d.name()),
            Value::Output(o) => write!(f, "<output {} of {}>", o.name(), o.drv().name()),
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, " {k} = {v}")?;
                }
                f.write_str(if m.is_empty() { "}" } else { " }" })
            }
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A Rust value an option can be defined with.
pub trait IntoValue {
    /// The value.
    fn into_value(self) -> Value;
}

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}

impl IntoValue for bool {
    fn into_value(self) -> Value {
        Value::Bool(self)
    }
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl IntoValue for $t {
            fn into_value(self) -> Value {
                Value::Int(i64::from(self))
            }
        }
        impl FromValue for $t {
            fn from_value(v: Value) -> Result<Self, String> {
                Self::from_value_ref(&v)
            }
            fn from_value_ref(v: &Value) -> Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i)
                        .map_err(|_| format!("`{i}` does not fit in {}", stringify!($t))),
                    other => Err(format!("expected an integer, got {}", other.kind())),
                }
            }
        }
    )*};
}
int_value!(i8, i16, i32, i64, u8, u16, u32);

impl IntoValue for &str {
    fn into_value(self) -> Value {
        Value::Str(Str::from(self))
    }
}

impl IntoValue for String {
    fn into_value(self) -> Value {
        Value::Str(Str::from(self))
    }
}

impl IntoValue for Str {
    fn into_value(self) -> Value {
        Value::Str(self)
    }
}

impl IntoValue for Drv {
    fn into_value(self) -> Value {
        Value::Package(self)
    }
}

impl IntoValue for Output {
    fn into_value(self) -> Value {
        Value::Output(self)
    }
}

impl<T: IntoValue> IntoValue for Vec<T> {
    fn into_value(self) -> Value {
        Value::List(self.into_iter().map(IntoValue::into_value).collect())
    }
}

impl<T: IntoValue, const N: usize> IntoValue for [T; N] {
    fn into_value(self) -> Value {
        Value::List(self.into_iter().map(IntoValue::into_value).collect())
    }
}

impl<K: Into<String>, T: IntoValue> IntoValue for BTreeMap<K, T> {
    fn into_value(self) -> Value {
        Value::Map(
            self.into_iter()
                .map(|(k, v)| (k.into(), v.into_value()))
                .collect(),
        )
    }
}

impl<T: IntoValue> IntoValue for Option<T> {
    fn into_value(self) -> Value {
        self.map_or(Value::Null, IntoValue::into_value)
    }
}

/// A Rust value an option's merged value can be read as. A failed
/// conversion says why; the caller names the option.
pub trait FromValue: Sized {
    /// The conversion.
    fn from_value(v: Value) -> Result<Self, String>;

    /// The conversion from a borrowed value: what reading an option
    /// uses, so that only what the Rust value keeps is copied. Copies the
    /// whole value unless implemented.
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        Self::from_value(v.clone())
    }
}

impl FromValue for Value {
    fn from_value(v: Value) -> Result<Self, String> {
        Ok(v)
    }
}

impl FromValue for bool {
    fn from_value(v: Value) -> Result<Self, String> {
        Self::from_value_ref(&v)
    }
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        match v {
            Value::Bool(b) => Ok(*b),
            other => Err(format!("expected a boolean, got {}", other.kind())),
        }
    }
}

/// Above `i64::MAX` (which no option type accepts) it is kept as
/// `i64::MAX`.
impl IntoValue for u64 {
    fn into_value(self) -> Value {
        Value::Int(i64::try_from(self).unwrap_or(i64::MAX))
    }
}

impl FromValue for u64 {
    fn from_value(v: Value) -> Result<Self, String> {
        Self::from_value_ref(&v)
    }
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => u64::try_from(*i).map_err(|_| format!("`{i}` is negative")),
            other => Err(format!("expected an integer, got {}", other.kind())),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Str(s) => Ok(s.into_parts().0),
            Value::Package(d) => Ok(crate::text!("{}", d).into_parts().0),
            Value::Output(o) => Ok(crate::text!("{}", o).into_parts().0),
            other => Err(format!("expected a string, got {}", other.kind())),
        }
    }
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        match v {
            Value::Str(s) => Ok(s.as_str().to_owned()),
            other => Self::from_value(other.clone()),
        }
    }
}

impl FromValue for Str {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Str(s) => Ok(s),
            Value::Package(d) => Ok(Str::from(d)),
            Value::Output(o) => Ok(Str::from(o)),
            other => Err(format!("expected a string, got {}", other.kind())),
        }
    }
}

impl FromValue for Drv {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Package(d) => Ok(d),
            other => Err(format!("expected a package, got {}", other.kind())),
        }
    }
}

/// A package reads as its default output.
impl FromValue for Output {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Output(o) => Ok(o),
            Value::Package(d) => Ok(d.out()),
            other => Err(format!("expected a package output, got {}", other.kind())),
        }
    }
}

impl<T: FromValue> FromValue for Vec<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::List(l) => l
                .into_iter()
                .enumerate()
                .map(|(i, v)| T::from_value(v).map_err(|e| format!("element {i}: {e}")))
                .collect(),
            other => Err(format!("expected a list, got {}", other.kind())),
        }
    }
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        match v {
            Value::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, v)| T::from_value_ref(v).map_err(|e| format!("element {i}: {e}")))
                .collect(),
            other => Err(format!("expected a list, got {}", other.kind())),
        }
    }
}

impl<T: FromValue> FromValue for BTreeMap<String, T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, v)| {
                    let v = T::from_value(v).map_err(|e| format!("key `{k}`: {e}"))?;
                    Ok((k, v))
                })
                .collect(),
            other => Err(format!("expected a map, got {}", other.kind())),
        }
    }
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        match v {
            Value::Map(m) => m
                .iter()
                .map(|(k, v)| {
                    let v = T::from_value_ref(v).map_err(|e| format!("key `{k}`: {e}"))?;
                    Ok((k.clone(), v))
                })
                .collect(),
            other => Err(format!("expected a map, got {}", other.kind())),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
    fn from_value_ref(v: &Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value_ref(v).map(Some),
        }
    }
}

/// Reads a value (typically a submodule's fields) as any deserializable
/// Rust type, through its JSON form (strings lose their context there:
/// read a [`Str`] or [`Drv`] field on its own to keep it).
///
/// ```
/// use bigtop_eval::module::{FromValue, Json, Value};
/// #[derive(serde::Deserialize)]
/// struct Host { name: String, port: u16 }
/// let v = Value::from_json(&serde_json::json!({"name": "web", "port": 80})).unwrap();
/// let Json(h) = Json::<Host>::from_value(v).unwrap();
/// assert_eq!((h.name.as_str(), h.port), ("web", 80));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromValue for Json<T> {
    fn from_value(v: Value) -> Result<Self, String> {
        serde_json::from_value(v.to_json())
            .map(Json)
            .map_err(|e| e.to_string())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        s.into_value()
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        s.into_value()
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
