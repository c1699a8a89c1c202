//! An RFC 8785 (JCS) encoder that writes a `Serialize` value straight into a byte buffer.
//!
//! Written by hand, for speed: everything the server signs or digests goes through here (an
//! authentication request's envelope, a device's answer, a call's digest), and the
//! `serde_json_canonicalizer` formatter it replaces allocated a boxed writer for every token
//! and parsed every object key back as JSON to sort it. That was 4–5 % of the server's CPU per
//! CIBA request (docs/benchmarks.md, "Canonical JSON without a formatter"). The crate stays as
//! the reference the tests compare this encoder with, byte for byte.
//!
//! What RFC 8785 asks, and how:
//! - **Objects**: members sorted by their names' UTF-16 code units (§3.2.3). Each object's
//!   values are written into a buffer of the object's own, then copied out in order; a name
//!   that appears twice is an error.
//! - **Numbers**: the ECMAScript rendering of the IEEE 754 double (§3.2.2.3), through `ryu-js`.
//!   Every integer type is converted to a double first, as JavaScript would read it: integers
//!   within ±2^53 are written as their digits, larger ones as their nearest double. NaN and
//!   the infinities are errors, at any depth.
//! - **Strings**: `"`, `\` and the control characters below U+0020 escaped (`\b`, `\t`, `\n`,
//!   `\f`, `\r`, else `\u00xx` in lower-case hex); everything else written as it is (§3.2.2.2).
//! - **Map keys** that are not strings (integers, booleans, unit variants) are written as the
//!   string of their JSON rendering, as `serde_json` does.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;

use serde::ser::{self, Serialize};

/// Why a value could not be encoded.
#[derive(Debug)]
pub(super) struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn error(message: &str) -> EncodeError {
    EncodeError(message.to_string())
}

/// The name `serde_json` gives the struct its `RawValue` serializes as: raw text cannot be
/// checked to be canonical, so it is refused.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Encodes `value` as canonical JSON.
pub(super) fn to_vec<T: ?Sized + Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    value.serialize(Encoder { out: &mut out })?;
    Ok(out)
}

/// Writes one value at the end of `out`.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

/// 2^53: integers up to this magnitude are exact as doubles and written as their digits.
const EXACT_INTEGER: u64 = 1 << 53;

fn write_f64(out: &mut Vec<u8>, value: f64) -> Result<(), EncodeError> {
    if !value.is_finite() {
        return Err(error("NaN and the infinities have no JSON form"));
    }
    let mut buffer = ryu_js::Buffer::new();
    out.extend_from_slice(buffer.format_finite(value).as_bytes());
    Ok(())
}

fn write_i64(out: &mut Vec<u8>, value: i64) {
    if value.unsigned_abs() <= EXACT_INTEGER {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    } else {
        // Finite: cannot fail.
        let _ = write_f64(out, value as f64);
    }
}

fn write_u64(out: &mut Vec<u8>, value: u64) {
    if value <= EXACT_INTEGER {
        out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    } else {
        let _ = write_f64(out, value as f64);
    }
}

/// Writes `s` as a JSON string.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// RFC 8785's member order: by the names' UTF-16 code units.
fn utf16_order(a: &str, b: &str) -> Ordering {
    // UTF-8 byte order and UTF-16 order agree except between a character above U+FFFF
    // (a surrogate pair, 0xD800…) and one in U+E000–U+FFFF; byte order is exact for ASCII.
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// Opens the object an enum variant with content is wrapped in, `{"variant":`, when there is
/// one; returns whether it did (the caller closes it with `}`).
fn open_variant(out: &mut Vec<u8>, variant: Option<&'static str>) -> bool {
    let Some(variant) = variant else {
        return false;
    };
    out.push(b'{');
    write_str(out, variant);
    out.push(b':');
    true
}

/// A member's name: a struct's field names are static, a map's keys are built.
enum Name {
    Static(&'static str),
    Owned(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Owned(s) => s,
        }
    }
}

/// An object being written: its values go to `values`, their names and ranges to `members`;
/// [`ObjectEncoder::finish`] sorts them and writes the object to `out`.
struct ObjectEncoder<'a> {
    out: &'a mut Vec<u8>,
    members: Vec<(Name, Range<usize>)>,
    values: Vec<u8>,
    /// A map's key, between `serialize_key` and `serialize_value`.
    pending_key: Option<String>,
    /// Set for a struct variant: the object is wrapped as `{"variant": …}`.
    in_variant: bool,
}

impl<'a> ObjectEncoder<'a> {
    fn new(out: &'a mut Vec<u8>, len: usize, variant: Option<&'static str>) -> Self {
        let in_variant = open_variant(out, variant);
        Self {
            out,
            members: Vec::with_capacity(len),
            values: Vec::with_capacity(64 * len),
            pending_key: None,
            in_variant,
        }
    }

    fn member<T: ?Sized + Serialize>(&mut self, name: Name, value: &T) -> Result<(), EncodeError> {
        let start = self.values.len();
        value.serialize(Encoder {
            out: &mut self.values,
        })?;
        self.members.push((name, start..self.values.len()));
        Ok(())
    }

    fn finish(mut self) -> Result<(), EncodeError> {
        self.members
            .sort_unstable_by(|(a, _), (b, _)| utf16_order(a.as_str(), b.as_str()));
        if self
            .members
            .windows(2)
            .any(|pair| pair[0].0.as_str() == pair[1].0.as_str())
        {
            return Err(error("an object has the same member name twice"));
        }
        let out = self.out;
        out.reserve(self.values.len() + 16 * self.members.len() + 2);
        out.push(b'{');
        for (i, (name, range)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, name.as_str());
            out.push(b':');
            out.extend_from_slice(&self.values[range.clone()]);
        }
        out.push(b'}');
        if self.in_variant {
            out.push(b'}');
        }
        Ok(())
    }
}

/// An array being written straight to `out`.
struct ArrayEncoder<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    /// Set for a tuple variant: the array is wrapped as `{"variant": […]}`.
    in_variant: bool,
}

impl<'a> ArrayEncoder<'a> {
    fn new(out: &'a mut Vec<u8>, variant: Option<&'static str>) -> Self {
        let in_variant = open_variant(out, variant);
        out.push(b'[');
        Self {
            out,
            first: true,
            in_variant,
        }
    }

    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), EncodeError> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        value.serialize(Encoder {
            out: &mut *self.out,
        })
    }

    fn finish(self) -> Result<(), EncodeError> {
        self.out.push(b']');
        if self.in_variant {
            self.out.push(b'}');
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Encoder<'a> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = ArrayEncoder<'a>;
    type SerializeTuple = ArrayEncoder<'a>;
    type SerializeTupleStruct = ArrayEncoder<'a>;
    type SerializeTupleVariant = ArrayEncoder<'a>;
    type SerializeMap = ObjectEncoder<'a>;
    type SerializeStruct = ObjectEncoder<'a>;
    type SerializeStructVariant = ObjectEncoder<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        write_i64(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        write_f64(self.out, v as f64)
    }
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        write_u64(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        write_f64(self.out, v as f64)
    }
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        write_f64(self.out, v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        write_f64(self.out, v)
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), EncodeError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), EncodeError> {
        let mut array = ArrayEncoder::new(self.out, None);
        for byte in v {
            ser::SerializeSeq::serialize_element(&mut array, byte)?;
        }
        array.finish()
    }
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), EncodeError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), EncodeError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        open_variant(self.out, Some(variant));
        value.serialize(Encoder {
            out: &mut *self.out,
        })?;
        self.out.push(b'}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<ArrayEncoder<'a>, EncodeError> {
        Ok(ArrayEncoder::new(self.out, None))
    }
    fn serialize_tuple(self, _len: usize) -> Result<ArrayEncoder<'a>, EncodeError> {
        Ok(ArrayEncoder::new(self.out, None))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<ArrayEncoder<'a>, EncodeError> {
        Ok(ArrayEncoder::new(self.out, None))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<ArrayEncoder<'a>, EncodeError> {
        Ok(ArrayEncoder::new(self.out, Some(variant)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<ObjectEncoder<'a>, EncodeError> {
        Ok(ObjectEncoder::new(self.out, len.unwrap_or(4), None))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<ObjectEncoder<'a>, EncodeError> {
        if name == RAW_VALUE_TOKEN {
            return Err(error("raw JSON cannot be checked to be canonical"));
        }
        Ok(ObjectEncoder::new(self.out, len, None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<ObjectEncoder<'a>, EncodeError> {
        Ok(ObjectEncoder::new(self.out, len, Some(variant)))
    }
}

/// The four array shapes serde tells apart write the same way.
macro_rules! array_shape {
    ($shape:ident, $add:ident) => {
        impl ser::$shape for ArrayEncoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            fn $add<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), EncodeError> {
                self.element(value)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.finish()
            }
        }
    };
}

array_shape!(SerializeSeq, serialize_element);
array_shape!(SerializeTuple, serialize_element);
array_shape!(SerializeTupleStruct, serialize_field);
array_shape!(SerializeTupleVariant, serialize_field);

impl ser::SerializeMap for ObjectEncoder<'_> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), EncodeError> {
        self.pending_key = Some(key.serialize(KeyEncoder)?);
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), EncodeError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| error("a map value came without its key"))?;
        self.member(Name::Owned(key), value)
    }
    fn end(self) -> Result<(), EncodeError> {
        self.finish()
    }
}

/// A struct and a struct variant write their fields the same way.
macro_rules! struct_shape {
    ($shape:ident) => {
        impl ser::$shape for ObjectEncoder<'_> {
            type Ok = ();
            type Error = EncodeError;
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), EncodeError> {
                self.member(Name::Static(key), value)
            }
            fn end(self) -> Result<(), EncodeError> {
                self.finish()
            }
        }
    };
}

struct_shape!(SerializeStruct);
struct_shape!(SerializeStructVariant);

/// A map key, as the text of the member name (not yet quoted).
struct KeyEncoder;

fn key_error() -> EncodeError {
    error("an object's member name must be a string, a number or a boolean")
}

impl ser::Serializer for KeyEncoder {
    type Ok = String;
    type Error = EncodeError;
    type SerializeSeq = ser::Impossible<String, EncodeError>;
    type SerializeTuple = ser::Impossible<String, EncodeError>;
    type SerializeTupleStruct = ser::Impossible<String, EncodeError>;
    type SerializeTupleVariant = ser::Impossible<String, EncodeError>;
    type SerializeMap = ser::Impossible<String, EncodeError>;
    type SerializeStruct = ser::Impossible<String, EncodeError>;
    type SerializeStructVariant = ser::Impossible<String, EncodeError>;

    fn serialize_str(self, v: &str) -> Result<String, EncodeError> {
        Ok(v.to_string())
    }
    fn serialize_char(self, v: char) -> Result<String, EncodeError> {
        Ok(v.to_string())
    }
    fn serialize_bool(self, v: bool) -> Result<String, EncodeError> {
        Ok(if v { "true" } else { "false" }.to_string())
    }
    fn serialize_i8(self, v: i8) -> Result<String, EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<String, EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<String, EncodeError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<String, EncodeError> {
        let mut out = Vec::new();
        write_i64(&mut out, v);
        number_key(out)
    }
    fn serialize_i128(self, v: i128) -> Result<String, EncodeError> {
        self.serialize_f64(v as f64)
    }
    fn serialize_u8(self, v: u8) -> Result<String, EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<String, EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<String, EncodeError> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<String, EncodeError> {
        let mut out = Vec::new();
        write_u64(&mut out, v);
        number_key(out)
    }
    fn serialize_u128(self, v: u128) -> Result<String, EncodeError> {
        self.serialize_f64(v as f64)
    }
    fn serialize_f32(self, v: f32) -> Result<String, EncodeError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<String, EncodeError> {
        let mut out = Vec::new();
        write_f64(&mut out, v)?;
        number_key(out)
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<String, EncodeError> {
        Err(key_error())
    }
    fn serialize_none(self) -> Result<String, EncodeError> {
        Err(key_error())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _value: &T) -> Result<String, EncodeError> {
        Err(key_error())
    }
    fn serialize_unit(self) -> Result<String, EncodeError> {
        Err(key_error())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, EncodeError> {
        Err(key_error())
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, EncodeError> {
        Ok(variant.to_string())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<String, EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<String, EncodeError> {
        Err(key_error())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, EncodeError> {
        Err(key_error())
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, EncodeError> {
        Err(key_error())
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, EncodeError> {
        Err(key_error())
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, EncodeError> {
        Err(key_error())
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, EncodeError> {
        Err(key_error())
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, EncodeError> {
        Err(key_error())
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, EncodeError> {
        Err(key_error())
    }
}

/// A number's rendering as a member name (ASCII digits, signs, `.`, `e`).
fn number_key(rendered: Vec<u8>) -> Result<String, EncodeError> {
    String::from_utf8(rendered).map_err(|_| key_error())
}

#[cfg(test)]
mod tests {
    //! The encoder against `serde_json_canonicalizer`, byte for byte, on random values and on
    //! every shape serde can produce; and where the two part on purpose (a NaN inside a value).
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{Map, Number, Value, json};
    use std::collections::BTreeMap;

    fn reference<T: Serialize>(value: &T) -> Option<Vec<u8>> {
        serde_json_canonicalizer::to_vec(value).ok()
    }

    fn ours<T: Serialize + ?Sized>(value: &T) -> Option<Vec<u8>> {
        to_vec(value).ok()
    }

    /// Characters that test escaping and the two orders (UTF-8 bytes, UTF-16 units): controls,
    /// the escaped ASCII, a private-use character (U+E000–U+FFFF sorts after a surrogate pair
    /// in UTF-16, before it in UTF-8), characters above U+FFFF, and a solidus.
    const ALPHABET: &[char] = &[
        'a',
        'b',
        'z',
        'A',
        '0',
        '9',
        ' ',
        '"',
        '\\',
        '/',
        '\u{0}',
        '\u{8}',
        '\t',
        '\n',
        '\u{b}',
        '\u{c}',
        '\r',
        '\u{1f}',
        '\u{7f}',
        'é',
        'ß',
        '€',
        '\u{2028}',
        '\u{e000}',
        '\u{ff61}',
        '\u{fffd}',
        '\u{10000}',
        '😀',
        '\u{10ffff}',
    ];

    fn random_string(rng: &mut StdRng) -> String {
        let len = rng.gen_range(0..6);
        (0..len)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
            .collect()
    }

    fn random_number(rng: &mut StdRng) -> Number {
        const EDGES: &[f64] = &[
            0.0,
            -0.0,
            1.0,
            -1.5,
            0.1,
            1e21,
            1e20,
            1e-7,
            1e-6,
            123456789.125,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            9007199254740992.0,
            9007199254740993.0,
            4.35,
        ];
        match rng.gen_range(0..6) {
            0 => Number::from(rng.r#gen::<i64>()),
            1 => Number::from(rng.r#gen::<u64>()),
            2 => Number::from(rng.gen_range(-(1i64 << 54)..(1i64 << 54))),
            3 => Number::from_f64(EDGES[rng.gen_range(0..EDGES.len())]).expect("finite"),
            _ => loop {
                let f = f64::from_bits(rng.r#gen::<u64>());
                if let Some(n) = Number::from_f64(f) {
                    break n;
                }
            },
        }
    }

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        match rng.gen_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.r#gen()),
            2 => Value::Number(random_number(rng)),
            3 => Value::String(random_string(rng)),
            4 => Value::Array(
                (0..rng.gen_range(0..5))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => {
                let mut map = Map::new();
                for _ in 0..rng.gen_range(0..7) {
                    map.insert(random_string(rng), random_value(rng, depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    #[test]
    fn random_values_encode_as_the_reference_does() {
        let mut rng = StdRng::seed_from_u64(8785);
        for i in 0..20_000 {
            let value = random_value(&mut rng, 4);
            let expected = reference(&value).expect("the reference encodes every finite value");
            assert_eq!(
                ours(&value).map(String::from_utf8),
                Some(Ok(String::from_utf8(expected).expect("UTF-8"))),
                "value {i}: {value}"
            );
        }
    }

    #[test]
    fn members_sort_by_utf16_code_units_not_by_bytes() {
        // U+FF61 is one UTF-16 unit (0xFF61), U+1F600 two (0xD83D 0xDE00): UTF-16 puts the
        // emoji first, UTF-8 bytes (EF… against F0…) would not.
        let value = json!({"\u{ff61}": 1, "😀": 2, "a": 3});
        let text = String::from_utf8(ours(&value).unwrap()).unwrap();
        assert_eq!(text, "{\"a\":3,\"😀\":2,\"\u{ff61}\":1}");
        assert_eq!(Some(text.into_bytes()), reference(&value));
    }

    #[derive(serde::Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i32, &'static str),
        Struct { z: bool, a: Option<f32> },
    }

    #[derive(serde::Serialize)]
    struct Everything {
        unit: (),
        shapes: Vec<Shape>,
        tuple: (u8, char, i128, u128),
        #[serde(with = "serde_bytes_as_seq")]
        bytes: Vec<u8>,
        int_keys: BTreeMap<i64, &'static str>,
        bool_keys: BTreeMap<bool, u8>,
        char_keys: BTreeMap<char, u8>,
        float: f32,
        none: Option<u8>,
        #[serde(flatten)]
        flattened: BTreeMap<String, u16>,
    }

    mod serde_bytes_as_seq {
        pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    #[test]
    fn every_serde_shape_encodes_as_the_reference_does() {
        let value = Everything {
            unit: (),
            shapes: vec![
                Shape::Unit,
                Shape::Newtype(7),
                Shape::Tuple(-3, "t"),
                Shape::Struct {
                    z: true,
                    a: Some(0.1),
                },
            ],
            tuple: (1, 'é', -(1i128 << 70), 1u128 << 80),
            bytes: vec![0, 1, 255],
            int_keys: [(-1, "m"), (10, "t"), (2, "d"), (1 << 60, "big")].into(),
            bool_keys: [(true, 1), (false, 0)].into(),
            char_keys: [('b', 1), ('"', 2)].into(),
            float: 1.5,
            none: None,
            flattened: [("zz".to_string(), 1), ("aa".to_string(), 2)].into(),
        };
        let text = String::from_utf8(ours(&value).unwrap()).unwrap();
        assert_eq!(
            Some(text.clone().into_bytes()),
            reference(&value),
            "ours: {text}"
        );
        assert!(text.starts_with("{\"aa\":2,\"bool_keys\":{\"false\":0,\"true\":1},"));
    }

    /// Emits the same member name twice, as a hand-written `Serialize` could.
    struct Twice;

    impl Serialize for Twice {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut map = s.serialize_map(Some(2))?;
            map.serialize_entry("k", &1)?;
            map.serialize_entry("k", &2)?;
            map.end()
        }
    }

    #[test]
    fn a_repeated_member_name_is_refused_like_the_reference() {
        assert_eq!(ours(&Twice), None);
        assert_eq!(reference(&Twice), None);
    }

    #[test]
    fn non_finite_numbers_are_refused_at_any_depth() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(ours(&bad), None);
            assert_eq!(ours(&vec![1.0, bad]), None);
            assert_eq!(ours(&BTreeMap::from([("x", bad)])), None);
            // Its text as a member name is only a string.
            assert!(ours(&BTreeMap::from([(bad.to_string(), 1)])).is_some());
        }
        // The reference refuses a NaN only at the top: inside a value its formatter is never
        // asked, and `serde_json` writes `null`, a value that was never there.
        assert_eq!(reference(&vec![f64::NAN]), Some(b"[null]".to_vec()));
        // A map key that is not a string, a number or a boolean.
        assert_eq!(ours(&BTreeMap::from([((1, 2), 3)])), None);
        assert_eq!(ours(&BTreeMap::from([(Some(1), 3)])), None);
    }
}
