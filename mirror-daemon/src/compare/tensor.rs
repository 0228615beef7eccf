//! Binary inference answers in the shape of their REST form, so that one comparison judges both.
//!
//! - An Open Inference Protocol `ModelInferResponse` becomes the REST answer
//!   `{"model_name", "model_version", "id", "parameters"?, "outputs": [{"name", "datatype", "shape",
//!   "parameters"?, "data": [...]}]}`; an output's elements come from its typed `contents` (the
//!   field its datatype names, else the first one that is set) or, when the answer has
//!   `raw_output_contents`, from the raw entry at the output's index (little-endian, by datatype:
//!   BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64, and BYTES as 4-byte-length-prefixed
//!   elements).
//! - A TF Serving `PredictResponse` becomes `{"model_spec"?: {...}, "outputs": {NAME: {"datatype":
//!   "DT_FLOAT", "shape": [...], "data": [...]}}}`, elements from `tensor_content` or the `*_val`
//!   field of the dtype (`half_val` holding FP16/BF16 bit patterns); fewer values than the shape
//!   needs repeat the last one, as TensorFlow reads them.
//!
//! Elements are exact: an `f32` becomes its shortest round-trip text (so two `f32` are equal
//! exactly when their texts are), FP16 and BF16 are widened to `f32` exactly first, integers are
//! written in full. NaN and infinities, which JSON cannot hold, become the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"`. A BYTES element is a string when it is UTF-8, else
//! `{"base64": ...}`.
//!
//! Raw contents that cannot be read as their datatype says (a length that is not a multiple of the
//! element size, more or fewer elements than the shape needs, a broken BYTES prefix, a missing raw
//! entry) are [`Malformed`]: the comparison notes them and judges the answer a mismatch. A datatype
//! without a known layout, and tensors of more elements than [`MAX_ELEMENTS`], are compared as
//! bytes: `{"raw_bytes": n, "sha256": ...}`.
use std::borrow::Cow;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::json::{Json, Number, Object};
use crate::proto::{
    inference::{InferParameter, InferTensorContents, ModelInferResponse, infer_parameter::ParameterChoice},
    tensorflow::{DataType, TensorProto, serving::PredictResponse},
};

/// Most tensor elements of one answer compared element by element; larger tensors compare as bytes.
pub const MAX_ELEMENTS: usize = 1 << 24;

/// A tensor whose content does not match its datatype or shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    /// Location of the tensor's data in the converted answer (`["outputs", "0", "data"]`).
    pub at: Vec<String>,
    /// What is wrong, starting with the output's name.
    pub problem: String,
}

/// A converted answer with what could not be read, and notes on what was compared as bytes.
#[derive(Clone, Debug, Default)]
pub struct Converted {
    pub json: Json<'static>,
    pub malformed: Vec<Malformed>,
    pub notes: Vec<String>,
}

fn key(k: &str) -> Cow<'static, str> {
    Cow::Owned(k.to_string())
}

fn object(members: Vec<(&str, Json<'static>)>) -> Json<'static> {
    Json::Object(members.into_iter().map(|(k, v)| (key(k), v)).collect::<Object<'static>>())
}

fn non_finite(x: f64) -> Json<'static> {
    Json::string(if x.is_nan() {
        "NaN"
    } else if x > 0.0 {
        "Infinity"
    } else {
        "-Infinity"
    })
}

/// An `f32` element: its shortest round-trip text.
pub fn f32_json(x: f32) -> Json<'static> {
    Number::from_f32(x).map_or_else(|| non_finite(f64::from(x)), Json::Number)
}

/// An `f64` element: its shortest round-trip text.
pub fn f64_json(x: f64) -> Json<'static> {
    Number::from_f64(x).map_or_else(|| non_finite(x), Json::Number)
}

fn int_json(x: i64) -> Json<'static> {
    Json::Number(Number::from(x))
}

fn uint_json(x: u64) -> Json<'static> {
    Json::Number(Number::from(x))
}

/// A BYTES element: the text when it is UTF-8, else `{"base64": ...}`.
pub fn bytes_json(b: &[u8]) -> Json<'static> {
    match std::str::from_utf8(b) {
        Ok(text) => Json::string(text),
        Err(_) => object(vec![("base64", Json::string(base64::engine::general_purpose::STANDARD.encode(b)))]),
    }
}

/// IEEE 754 binary16 widened to `f32` (exactly: every half is an `f32`).
pub fn half_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let fraction = u32::from(bits & 0x3ff);
    let magnitude = match exponent {
        // Zero and subnormals: fraction × 2^-24, exact in f32.
        0 => {
            let value = fraction as f32 / 16_777_216.0;
            return if sign == 0 { value } else { -value };
        }
        0x1f => 0xff << 23 | fraction << 13,
        _ => (exponent + 127 - 15) << 23 | fraction << 13,
    };
    f32::from_bits(sign | magnitude)
}

/// bfloat16 widened to `f32`: the upper half of an `f32`.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Digest of content compared as bytes.
fn digest(bytes: &[u8]) -> Json<'static> {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    object(vec![("raw_bytes", uint_json(bytes.len() as u64)), ("sha256", Json::string(hex))])
}

/// Little-endian element layout of a datatype (OIP names; TF names are mapped to them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Bool,
    Uint(usize),
    Int(usize),
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    /// 4-byte little-endian length, then the bytes, per element.
    Bytes,
}

fn layout(datatype: &str) -> Option<Layout> {
    Some(match datatype.to_ascii_uppercase().as_str() {
        "BOOL" => Layout::Bool,
        "UINT8" => Layout::Uint(1),
        "UINT16" => Layout::Uint(2),
        "UINT32" => Layout::Uint(4),
        "UINT64" => Layout::Uint(8),
        "INT8" => Layout::Int(1),
        "INT16" => Layout::Int(2),
        "INT32" => Layout::Int(4),
        "INT64" => Layout::Int(8),
        "FP16" => Layout::Fp16,
        "BF16" => Layout::Bf16,
        "FP32" => Layout::Fp32,
        "FP64" => Layout::Fp64,
        "BYTES" => Layout::Bytes,
        _ => return None,
    })
}

impl Layout {
    fn size(self) -> Option<usize> {
        match self {
            Layout::Bool => Some(1),
            Layout::Uint(n) | Layout::Int(n) => Some(n),
            Layout::Fp16 | Layout::Bf16 => Some(2),
            Layout::Fp32 => Some(4),
            Layout::Fp64 => Some(8),
            Layout::Bytes => None,
        }
    }

    fn element(self, chunk: &[u8]) -> Json<'static> {
        let mut le = [0u8; 8];
        for (dst, src) in le.iter_mut().zip(chunk) {
            *dst = *src;
        }
        let bits = u64::from_le_bytes(le);
        match self {
            Layout::Bool => Json::Bool(bits != 0),
            Layout::Uint(_) => uint_json(bits),
            Layout::Int(n) => {
                // Sign-extend from n bytes.
                let shift = 64 - 8 * n.clamp(1, 8) as u32;
                int_json(((bits << shift) as i64) >> shift)
            }
            Layout::Fp16 => f32_json(half_to_f32(bits as u16)),
            Layout::Bf16 => f32_json(bf16_to_f32(bits as u16)),
            Layout::Fp32 => f32_json(f32::from_bits(bits as u32)),
            Layout::Fp64 => f64_json(f64::from_bits(bits)),
            Layout::Bytes => bytes_json(chunk),
        }
    }
}

/// Decodes raw little-endian content; the error says what is wrong.
fn raw_elements(layout: Layout, datatype: &str, raw: &[u8]) -> Result<Vec<Json<'static>>, String> {
    if let Some(size) = layout.size() {
        if !raw.len().is_multiple_of(size) {
            return Err(format!(
                "has {} bytes of raw content, not a multiple of {size} ({datatype})",
                raw.len()
            ));
        }
        return Ok(raw.chunks_exact(size).map(|chunk| layout.element(chunk)).collect());
    }
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((prefix, after)) = rest.split_first_chunk::<4>() else {
            return Err(format!(
                "BYTES element {} has a truncated length prefix ({} bytes)",
                out.len(),
                rest.len()
            ));
        };
        let length = u32::from_le_bytes(*prefix) as usize;
        let Some(element) = after.get(..length) else {
            return Err(format!(
                "BYTES element {} has length {length} but only {} bytes follow",
                out.len(),
                after.len()
            ));
        };
        out.push(bytes_json(element));
        rest = after.get(length..).unwrap_or_default();
    }
    Ok(out)
}

/// The number of elements a shape needs, when every dimension is known and the product fits.
fn elements_needed(shape: &[i64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
}

fn shape_json(shape: &[i64]) -> Json<'static> {
    Json::Array(shape.iter().map(|&d| int_json(d)).collect())
}

/// Tracks the elements converted so far for one answer, against [`MAX_ELEMENTS`].
struct Budget(usize);

impl Budget {
    fn take(&mut self, n: usize) -> bool {
        match self.0.checked_sub(n) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => false,
        }
    }
}

fn parameter_json(p: &InferParameter) -> Json<'static> {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Json::Bool(*b),
        Some(ParameterChoice::Int64Param(n)) => int_json(*n),
        Some(ParameterChoice::StringParam(s)) => Json::string(s.clone()),
        None => Json::Null,
    }
}

fn parameters_json(parameters: &std::collections::HashMap<String, InferParameter>) -> Option<Json<'static>> {
    (!parameters.is_empty()).then(|| {
        Json::Object(parameters.iter().map(|(k, v)| (key(k), parameter_json(v))).collect::<Object<'static>>())
    })
}

/// The typed contents field of an OIP output: the one its datatype names when that is set, else
/// the first one set (in field order), else the named one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Typed {
    Bool,
    Int,
    Int64,
    Uint,
    Uint64,
    Fp32,
    Fp64,
    Bytes,
}

impl Typed {
    const ALL: [Typed; 8] = [
        Typed::Bool,
        Typed::Int,
        Typed::Int64,
        Typed::Uint,
        Typed::Uint64,
        Typed::Fp32,
        Typed::Fp64,
        Typed::Bytes,
    ];

    fn of(datatype: &str, c: &InferTensorContents) -> Typed {
        let named = match datatype.to_ascii_uppercase().as_str() {
            "BOOL" => Some(Typed::Bool),
            "INT8" | "INT16" | "INT32" => Some(Typed::Int),
            "INT64" => Some(Typed::Int64),
            "UINT8" | "UINT16" | "UINT32" => Some(Typed::Uint),
            "UINT64" => Some(Typed::Uint64),
            "FP32" => Some(Typed::Fp32),
            "FP64" => Some(Typed::Fp64),
            "BYTES" => Some(Typed::Bytes),
            _ => None,
        };
        named
            .filter(|t| t.len(c) > 0)
            .or_else(|| Typed::ALL.into_iter().find(|t| t.len(c) > 0))
            .or(named)
            .unwrap_or(Typed::Fp32)
    }

    fn len(self, c: &InferTensorContents) -> usize {
        match self {
            Typed::Bool => c.bool_contents.len(),
            Typed::Int => c.int_contents.len(),
            Typed::Int64 => c.int64_contents.len(),
            Typed::Uint => c.uint_contents.len(),
            Typed::Uint64 => c.uint64_contents.len(),
            Typed::Fp32 => c.fp32_contents.len(),
            Typed::Fp64 => c.fp64_contents.len(),
            Typed::Bytes => c.bytes_contents.len(),
        }
    }

    fn elements(self, c: &InferTensorContents) -> Vec<Json<'static>> {
        match self {
            Typed::Bool => c.bool_contents.iter().map(|&b| Json::Bool(b)).collect(),
            Typed::Int => c.int_contents.iter().map(|&n| int_json(n.into())).collect(),
            Typed::Int64 => c.int64_contents.iter().map(|&n| int_json(n)).collect(),
            Typed::Uint => c.uint_contents.iter().map(|&n| uint_json(n.into())).collect(),
            Typed::Uint64 => c.uint64_contents.iter().map(|&n| uint_json(n)).collect(),
            Typed::Fp32 => c.fp32_contents.iter().map(|&x| f32_json(x)).collect(),
            Typed::Fp64 => c.fp64_contents.iter().map(|&x| f64_json(x)).collect(),
            Typed::Bytes => c.bytes_contents.iter().map(|b| bytes_json(b)).collect(),
        }
    }
}

/// A `ModelInferResponse` as the REST answer.
pub fn model_infer_response(response: &ModelInferResponse) -> Converted {
    let mut converted = Converted::default();
    let mut budget = Budget(MAX_ELEMENTS);
    let raw = &response.raw_output_contents;
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for (i, output) in response.outputs.iter().enumerate() {
        let at = || vec!["outputs".to_string(), i.to_string(), "data".to_string()];
        let name = if output.name.is_empty() { "?" } else { output.name.as_str() };
        let data = if raw.is_empty() {
            let empty = InferTensorContents::default();
            let contents = output.contents.as_ref().unwrap_or(&empty);
            let typed = Typed::of(&output.datatype, contents);
            if budget.take(typed.len(contents)) {
                Json::Array(typed.elements(contents))
            } else {
                converted.notes.push(format!(
                    "output {name}: more than {MAX_ELEMENTS} elements in the answer; contents compared as bytes"
                ));
                digest(&prost::Message::encode_to_vec(contents))
            }
        } else {
            match raw.get(i) {
                None => {
                    converted.malformed.push(Malformed {
                        at: at(),
                        problem: format!("output {name}: no raw_output_contents entry at index {i}"),
                    });
                    Json::Null
                }
                Some(bytes) => match layout(&output.datatype) {
                    None => {
                        converted.notes.push(format!(
                            "output {name}: datatype {:?} has no known layout; raw contents compared as bytes",
                            output.datatype
                        ));
                        digest(bytes)
                    }
                    Some(layout) => {
                        let estimate = layout.size().map_or(bytes.len() / 4, |s| bytes.len() / s);
                        if !budget.take(estimate) {
                            converted.notes.push(format!(
                                "output {name}: more than {MAX_ELEMENTS} elements in the answer; raw contents compared as bytes"
                            ));
                            digest(bytes)
                        } else {
                            match raw_elements(layout, &output.datatype, bytes) {
                                Ok(elements) => {
                                    if let Some(needed) = elements_needed(&output.shape)
                                        && needed != elements.len() as u64
                                    {
                                        converted.malformed.push(Malformed {
                                            at: at(),
                                            problem: format!(
                                                "output {name}: raw_output_contents holds {} {} elements but shape {:?} needs {needed}",
                                                elements.len(),
                                                output.datatype,
                                                output.shape
                                            ),
                                        });
                                    }
                                    Json::Array(elements)
                                }
                                Err(problem) => {
                                    converted.malformed.push(Malformed {
                                        at: at(),
                                        problem: format!("output {name}: {problem}"),
                                    });
                                    digest(bytes)
                                }
                            }
                        }
                    }
                },
            }
        };
        let mut members = vec![
            ("name", Json::string(output.name.clone())),
            ("datatype", Json::string(output.datatype.clone())),
            ("shape", shape_json(&output.shape)),
            ("data", data),
        ];
        if let Some(p) = parameters_json(&output.parameters) {
            members.push(("parameters", p));
        }
        outputs.push(object(members));
    }
    if raw.len() > response.outputs.len() {
        converted.malformed.push(Malformed {
            at: vec!["outputs".to_string()],
            problem: format!(
                "{} raw_output_contents entries for {} outputs",
                raw.len(),
                response.outputs.len()
            ),
        });
    }
    let mut members = vec![
        ("model_name", Json::string(response.model_name.clone())),
        ("model_version", Json::string(response.model_version.clone())),
        ("id", Json::string(response.id.clone())),
        ("outputs", Json::Array(outputs)),
    ];
    if let Some(p) = parameters_json(&response.parameters) {
        members.push(("parameters", p));
    }
    converted.json = object(members);
    converted
}

/// The name of a TensorFlow dtype (`DT_FLOAT`), including those newer than the vendored enum.
pub fn dtype_name(dtype: i32) -> String {
    match DataType::try_from(dtype) {
        Ok(known) => known.as_str_name().to_string(),
        Err(_) => match dtype {
            20 => "DT_RESOURCE".into(),
            21 => "DT_VARIANT".into(),
            22 => "DT_UINT32".into(),
            23 => "DT_UINT64".into(),
            other => format!("DT_{other}"),
        },
    }
}

/// The OIP datatype a TensorFlow dtype's elements are laid out as, if any.
pub fn oip_datatype(dtype_name: &str) -> Option<&'static str> {
    Some(match dtype_name.strip_prefix("DT_")? {
        "FLOAT" => "FP32",
        "DOUBLE" => "FP64",
        "HALF" => "FP16",
        "BFLOAT16" => "BF16",
        "INT8" | "QINT8" => "INT8",
        "INT16" | "QINT16" => "INT16",
        "INT32" | "QINT32" => "INT32",
        "INT64" => "INT64",
        "UINT8" | "QUINT8" => "UINT8",
        "UINT16" | "QUINT16" => "UINT16",
        "UINT32" => "UINT32",
        "UINT64" => "UINT64",
        "BOOL" => "BOOL",
        "STRING" => "BYTES",
        _ => return None,
    })
}

/// The typed values of a TensorProto, by dtype; `None` when the dtype has no typed field here.
fn tf_values(t: &TensorProto, oip: &str) -> Option<Vec<Json<'static>>> {
    Some(match oip {
        "FP32" => t.float_val.iter().map(|&x| f32_json(x)).collect(),
        "FP64" => t.double_val.iter().map(|&x| f64_json(x)).collect(),
        "FP16" => t.half_val.iter().map(|&h| f32_json(half_to_f32(h as u16))).collect(),
        "BF16" => t.half_val.iter().map(|&h| f32_json(bf16_to_f32(h as u16))).collect(),
        "INT8" | "INT16" | "INT32" | "UINT8" | "UINT16" => {
            t.int_val.iter().map(|&n| int_json(n.into())).collect()
        }
        "INT64" => t.int64_val.iter().map(|&n| int_json(n)).collect(),
        "BOOL" => t.bool_val.iter().map(|&b| Json::Bool(b)).collect(),
        "BYTES" => t.string_val.iter().map(|b| bytes_json(b)).collect(),
        _ => return None,
    })
}

fn tensor_proto(
    name: &str,
    t: &TensorProto,
    budget: &mut Budget,
    converted: &mut Converted,
) -> Json<'static> {
    let at = || vec!["outputs".to_string(), name.to_string(), "data".to_string()];
    let dtype = dtype_name(t.dtype);
    let shape: Option<Vec<i64>> = match &t.tensor_shape {
        Some(s) if s.unknown_rank => None,
        Some(s) => Some(s.dim.iter().map(|d| d.size).collect()),
        None => Some(Vec::new()),
    };
    let needed = shape.as_deref().and_then(elements_needed);
    let oip = oip_datatype(&dtype);
    let data = if !t.tensor_content.is_empty() {
        match oip.and_then(layout).filter(|l| *l != Layout::Bytes) {
            None => {
                converted.notes.push(format!("output {name}: {dtype} tensor_content compared as bytes"));
                digest(&t.tensor_content)
            }
            Some(layout) => {
                let estimate = layout.size().map_or(0, |s| t.tensor_content.len() / s);
                if !budget.take(estimate) {
                    converted.notes.push(format!(
                        "output {name}: more than {MAX_ELEMENTS} elements in the answer; tensor_content compared as bytes"
                    ));
                    digest(&t.tensor_content)
                } else {
                    match raw_elements(layout, &dtype, &t.tensor_content) {
                        Ok(elements) => {
                            if let Some(needed) = needed
                                && needed != elements.len() as u64
                            {
                                converted.malformed.push(Malformed {
                                    at: at(),
                                    problem: format!(
                                        "output {name}: tensor_content holds {} {dtype} elements but shape {:?} needs {needed}",
                                        elements.len(),
                                        shape.as_deref().unwrap_or_default()
                                    ),
                                });
                            }
                            Json::Array(elements)
                        }
                        Err(problem) => {
                            converted
                                .malformed
                                .push(Malformed { at: at(), problem: format!("output {name}: {problem}") });
                            digest(&t.tensor_content)
                        }
                    }
                }
            }
        }
    } else {
        match oip.and_then(|o| tf_values(t, o)) {
            None => {
                converted.notes.push(format!("output {name}: {dtype} values compared as bytes"));
                digest(&prost::Message::encode_to_vec(t))
            }
            Some(mut values) => {
                // Fewer values than the shape needs: the last one repeats (TensorFlow's reading).
                if let (Some(needed), Some(last)) = (needed, values.last().cloned())
                    && (values.len() as u64) < needed
                {
                    let missing = usize::try_from(needed).unwrap_or(usize::MAX) - values.len();
                    if budget.take(missing.saturating_add(values.len())) {
                        values.resize(values.len() + missing, last);
                    } else {
                        converted.notes.push(format!(
                            "output {name}: more than {MAX_ELEMENTS} elements in the answer; values compared as bytes"
                        ));
                        return tensor_object(&dtype, &shape, digest(&prost::Message::encode_to_vec(t)));
                    }
                } else if !budget.take(values.len()) {
                    converted.notes.push(format!(
                        "output {name}: more than {MAX_ELEMENTS} elements in the answer; values compared as bytes"
                    ));
                    return tensor_object(&dtype, &shape, digest(&prost::Message::encode_to_vec(t)));
                }
                Json::Array(values)
            }
        }
    };
    tensor_object(&dtype, &shape, data)
}

fn tensor_object(dtype: &str, shape: &Option<Vec<i64>>, data: Json<'static>) -> Json<'static> {
    object(vec![
        ("datatype", Json::string(dtype)),
        ("shape", shape.as_deref().map_or(Json::Null, shape_json)),
        ("data", data),
    ])
}

/// A `PredictResponse` in the tensor shape above.
pub fn predict_response(response: &PredictResponse) -> Converted {
    let mut converted = Converted::default();
    let mut budget = Budget(MAX_ELEMENTS);
    let mut names: Vec<&String> = response.outputs.keys().collect();
    names.sort();
    let mut outputs = Vec::with_capacity(names.len());
    for name in names {
        if let Some(t) = response.outputs.get(name) {
            let tensor = tensor_proto(name, t, &mut budget, &mut converted);
            outputs.push((key(name), tensor));
        }
    }
    let mut members = vec![("outputs", Json::Object(outputs.into_iter().collect::<Object<'static>>()))];
    if let Some(spec) = &response.model_spec {
        let mut fields = vec![
            ("name", Json::string(spec.name.clone())),
            ("signature_name", Json::string(spec.signature_name.clone())),
        ];
        if let Some(version) = spec.version {
            fields.push(("version", int_json(version)));
        }
        members.push(("model_spec", object(fields)));
    }
    converted.json = object(members);
    converted
}
