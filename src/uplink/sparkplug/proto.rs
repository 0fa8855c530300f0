//! The Sparkplug B payload (`sparkplug_b.proto`, package `org.eclipse.tahu.protobuf`, proto2),
//! written out by hand for `prost` so that no `protoc` or build script is needed. Only the
//! messages and fields ecogate writes or reads are here; field numbers are the specification's
//! and must never change. Fields this file leaves out (templates, data sets, extensions) are
//! skipped when decoding, as protobuf allows.
//!
//! proto2 `optional` maps to `Option`: a `Some(false)` or `Some(0)` is written on the wire, which
//! the birth certificates need (`Node Control/Rebirth = false` must be present).

/// `Payload`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Milliseconds since the Unix epoch (UTC) when the message was published.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// 0–255; absent in NDEATH and in commands.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// One of [`DataType`].
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// `Payload.Metric.value` (data sets, templates and extensions are not used).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8, Int16, Int32 (two's complement in the low bits), UInt8, UInt16, UInt32.
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    /// Int64 (two's complement), UInt64, DateTime (ms since the epoch).
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    StringValue(String),
    /// Bytes, File.
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// `Payload.MetaData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaData {
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// `Payload.PropertySet`: `keys[i]` names `values[i]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue` (nested property sets and extensions are not used).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueKind>,
}

/// `Payload.PropertyValue.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    #[prost(uint32, tag = "3")]
    IntValue(u32),
    #[prost(uint64, tag = "4")]
    LongValue(u64),
    #[prost(float, tag = "5")]
    FloatValue(f32),
    #[prost(double, tag = "6")]
    DoubleValue(f64),
    #[prost(bool, tag = "7")]
    BooleanValue(bool),
    #[prost(string, tag = "8")]
    StringValue(String),
}

/// Sparkplug basic data types (the numbers in `Metric.datatype` and `PropertyValue.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DataType {
    Int32 = 3,
    Int64 = 4,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
}

impl DataType {
    pub fn code(self) -> u32 {
        self as u32
    }
}

impl Metric {
    /// The metric's value as a bool, when it carries one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Some(MetricValue::BooleanValue(b)) => Some(b),
            _ => None,
        }
    }
}

impl PropertySet {
    /// The string property `key`, if present.
    pub fn string(&self, key: &str) -> Option<&str> {
        let i = self.keys.iter().position(|k| k == key)?;
        match self.values.get(i)?.value.as_ref()? {
            PropertyValueKind::StringValue(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn small() -> Payload {
        Payload {
            timestamp: Some(300),
            metrics: vec![
                Metric {
                    name: Some("bdSeq".into()),
                    datatype: Some(DataType::Int64.code()),
                    value: Some(MetricValue::LongValue(3)),
                    ..Default::default()
                },
                Metric {
                    name: Some("Node Control/Rebirth".into()),
                    datatype: Some(DataType::Boolean.code()),
                    value: Some(MetricValue::BooleanValue(false)),
                    ..Default::default()
                },
            ],
            seq: Some(0),
            ..Default::default()
        }
    }

    /// The bytes worked out by hand from the protobuf wire format (tag = field << 3 | wire type;
    /// varint = 0, length-delimited = 2):
    ///
    /// ```text
    /// 08 ac 02        timestamp (1, varint) = 300: 300 = 0b10_0101100 → ac 02
    /// 12 0b ...       metrics (2, len 11)
    ///   0a 05 "bdSeq"   name (1, len 5)
    ///   20 04           datatype (4, varint) = 4 Int64
    ///   58 03           long_value (11 → 0x58, varint) = 3
    /// 12 1a ...       metrics (2, len 26)
    ///   0a 14 "Node Control/Rebirth"   name (1, len 20)
    ///   20 0b           datatype = 11 Boolean
    ///   70 00           boolean_value (14 → 0x70) = false, present because proto2 optional
    /// 18 00           seq (3, varint) = 0, present for the same reason
    /// ```
    #[test]
    fn known_bytes_of_a_small_birth() {
        let mut want = vec![0x08, 0xac, 0x02, 0x12, 0x0b, 0x0a, 0x05];
        want.extend_from_slice(b"bdSeq");
        want.extend_from_slice(&[0x20, 0x04, 0x58, 0x03, 0x12, 0x1a, 0x0a, 0x14]);
        want.extend_from_slice(b"Node Control/Rebirth");
        want.extend_from_slice(&[0x20, 0x0b, 0x70, 0x00, 0x18, 0x00]);
        assert_eq!(small().encode_to_vec(), want);
        assert_eq!(Payload::decode(want.as_slice()).unwrap(), small());
    }

    #[test]
    fn every_field_round_trips() {
        let p = Payload {
            timestamp: Some(1_764_806_400_123),
            seq: Some(255),
            uuid: Some("ecogate".into()),
            body: Some(vec![0, 1, 2]),
            metrics: vec![
                Metric {
                    name: Some("Lane/Plate".into()),
                    alias: Some(7),
                    timestamp: Some(1),
                    datatype: Some(DataType::String.code()),
                    is_historical: Some(false),
                    is_transient: Some(true),
                    is_null: Some(false),
                    metadata: Some(MetaData {
                        description: Some("plate".into()),
                        ..Default::default()
                    }),
                    properties: Some(PropertySet {
                        keys: vec!["engUnit".into()],
                        values: vec![PropertyValue {
                            r#type: Some(DataType::String.code()),
                            is_null: None,
                            value: Some(PropertyValueKind::StringValue("ms".into())),
                        }],
                    }),
                    value: Some(MetricValue::StringValue("豫A12345".into())),
                },
                Metric {
                    name: Some("neg".into()),
                    datatype: Some(DataType::Int32.code()),
                    value: Some(MetricValue::IntValue(-5i32 as u32)),
                    ..Default::default()
                },
                Metric {
                    name: Some("d".into()),
                    datatype: Some(DataType::Double.code()),
                    value: Some(MetricValue::DoubleValue(12.5)),
                    ..Default::default()
                },
                Metric {
                    name: Some("f".into()),
                    value: Some(MetricValue::FloatValue(0.25)),
                    ..Default::default()
                },
                Metric {
                    name: Some("null".into()),
                    datatype: Some(DataType::String.code()),
                    is_null: Some(true),
                    ..Default::default()
                },
            ],
        };
        let back = Payload::decode(p.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.metrics[0]
                .properties
                .as_ref()
                .unwrap()
                .string("engUnit"),
            Some("ms")
        );
        assert_eq!(
            back.metrics[1].value,
            Some(MetricValue::IntValue(0xffff_fffb))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Payload::decode(&b"{\"rebirth\": true}"[..]).is_err());
        assert!(Payload::decode(&[0x12, 0x40, 0x0a][..]).is_err());
    }
}
