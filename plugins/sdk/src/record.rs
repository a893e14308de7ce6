//! The input record type a processor sees, independent of the WIT bindings
//! so processors compile and test natively.

/// A record header: a string key and raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

/// One input log record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Source partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Producer timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

impl Record {
    /// A record with just a value; handy in tests.
    pub fn with_value(offset: i64, value: impl Into<Vec<u8>>) -> Self {
        Record {
            offset,
            value: value.into(),
            ..Record::default()
        }
    }

    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The first header with this key.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_slice())
    }
}
