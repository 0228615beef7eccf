//! Message definitions for gRPC answers: the built-in inference APIs and the descriptor sets the
//! user gives (`--proto-descriptor FILE`, as `protoc --descriptor_set_out --include_imports` or
//! `buf build` write them), loaded once at start-up.
//!
//! A method `/package.Service/Method` is looked up by its service's full name; its output type
//! decodes answers and its input type requests. A decoded message becomes [`Json`] the way
//! protobuf's JSON mapping would write it, with three choices made for comparison:
//! - field names are the names in the `.proto` file (`request_id`, not `requestId`), since ignore
//!   patterns are written by people reading the `.proto` file;
//! - fields without presence (proto3 scalars, repeated fields, maps) are always present, with
//!   their default when unset, so that a value left out on the wire and a default written out
//!   compare equal; fields with presence (messages, `optional`, oneof members) only when set;
//! - 64-bit integers are numbers (exact, see [`Json`]), bytes are base64 strings, enums their
//!   value's name (or number when unknown), and fields unknown to the descriptor appear as
//!   `"#NUMBER"` with their encoded bytes in base64, so a field the descriptor does not know still
//!   takes part in the comparison.
use std::borrow::Cow;

use base64::Engine as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, MethodDescriptor, ReflectMessage, Value,
};

use super::{
    json::{Json, Number, Object},
    tensor::{f32_json, f64_json},
};

/// Which message of a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// Why a descriptor set could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "is not a usable FileDescriptorSet ({0}); write it with `protoc --include_imports --descriptor_set_out=FILE` or `buf build -o FILE`"
    )]
    Invalid(#[from] prost_reflect::DescriptorError),
}

/// Why a message could not be decoded with its method's type.
#[derive(Debug, thiserror::Error)]
#[error("is not a valid {type_name} ({reason})")]
pub struct DecodeError {
    pub type_name: String,
    pub reason: String,
}

/// The message definitions gRPC answers are decoded with.
#[derive(Clone, Debug, PartialEq)]
pub struct Schemas {
    pool: DescriptorPool,
}

impl Default for Schemas {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Schemas {
    /// The built-in definitions: the Open Inference Protocol and TF Serving's Predict.
    pub fn builtin() -> Self {
        // The embedded set was produced by the build from the vendored protos; it always decodes.
        let pool = DescriptorPool::decode(crate::proto::DESCRIPTOR_SET).unwrap_or_default();
        Self { pool }
    }

    /// The built-in definitions plus the given encoded `FileDescriptorSet`s.
    pub fn with_descriptor_sets<'a>(sets: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, SchemaError> {
        let mut schemas = Self::builtin();
        for set in sets {
            schemas.add_descriptor_set(set)?;
        }
        Ok(schemas)
    }

    /// Adds an encoded `FileDescriptorSet`; files already known (by name) are kept as they are.
    pub fn add_descriptor_set(&mut self, bytes: &[u8]) -> Result<(), SchemaError> {
        let mut pool = self.pool.clone();
        pool.decode_file_descriptor_set(bytes)?;
        self.pool = pool;
        Ok(())
    }

    /// The method a gRPC path names, when a definition has it.
    pub fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = crate::grpc::method(path)?;
        self.pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)
    }

    /// Whether any service of this name and method is known.
    pub fn knows(&self, path: &str) -> bool {
        self.method(path).is_some()
    }

    /// Decodes one message of `path`'s method as JSON; `None` when the method is unknown.
    pub fn decode(
        &self,
        path: &str,
        direction: Direction,
        message: &[u8],
    ) -> Option<Result<Json<'static>, DecodeError>> {
        let method = self.method(path)?;
        let descriptor = match direction {
            Direction::Request => method.input(),
            Direction::Response => method.output(),
        };
        Some(decode_as(&descriptor, message))
    }
}

/// Decodes `message` as `descriptor`'s type.
pub fn decode_as(descriptor: &MessageDescriptor, message: &[u8]) -> Result<Json<'static>, DecodeError> {
    DynamicMessage::decode(descriptor.clone(), message)
        .map(|m| message_json(&m))
        .map_err(|e| DecodeError { type_name: descriptor.full_name().to_string(), reason: e.to_string() })
}

fn base64(bytes: &[u8]) -> Json<'static> {
    Json::string(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn message_json(message: &DynamicMessage) -> Json<'static> {
    let mut members: Vec<(Cow<'static, str>, Json<'static>)> = Vec::new();
    for field in message.descriptor().fields() {
        let explicit = field.containing_oneof().is_some() || (field.supports_presence() && !field.is_list());
        if explicit && !message.has_field(&field) {
            continue;
        }
        let value = message.get_field(&field);
        members.push((Cow::Owned(field.name().to_string()), value_json(&value, &field.kind())));
    }
    for unknown in message.unknown_fields() {
        let mut encoded = Vec::new();
        unknown.encode(&mut encoded);
        members.push((Cow::Owned(format!("#{}", unknown.number())), base64(&encoded)));
    }
    Json::Object(Object::from_members(members))
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn value_json(value: &Value, kind: &Kind) -> Json<'static> {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => Json::Number(Number::from(i64::from(*n))),
        Value::I64(n) => Json::Number(Number::from(*n)),
        Value::U32(n) => Json::Number(Number::from(u64::from(*n))),
        Value::U64(n) => Json::Number(Number::from(*n)),
        Value::F32(x) => f32_json(*x),
        Value::F64(x) => f64_json(*x),
        Value::String(s) => Json::string(s.clone()),
        Value::Bytes(b) => base64(b),
        Value::EnumNumber(n) => match kind.as_enum().and_then(|e| e.get_value(*n)) {
            Some(v) => Json::string(v.name()),
            None => Json::Number(Number::from(i64::from(*n))),
        },
        Value::Message(m) => message_json(m),
        Value::List(items) => Json::Array(items.iter().map(|v| value_json(v, kind)).collect()),
        Value::Map(map) => {
            let value_kind = kind.as_message().map(|entry| entry.map_entry_value_field().kind());
            let value_kind = value_kind.as_ref().unwrap_or(kind);
            Json::Object(
                map.iter()
                    .map(|(k, v)| (Cow::Owned(map_key(k)), value_json(v, value_kind)))
                    .collect::<Object<'static>>(),
            )
        }
    }
}
