//! Ready-made [`Resource::decode`](crate::Resource::decode) bodies for common
//! payload encodings.

/// The bytes as they are.
pub fn bytes(payload: &[u8]) -> Result<Vec<u8>, String> {
    Ok(payload.to_vec())
}

/// UTF-8 text.
pub fn utf8(payload: &[u8]) -> Result<String, String> {
    String::from_utf8(payload.to_vec()).map_err(|e| format!("not UTF-8: {e}"))
}

/// A JSON document (`serde_json`), e.g. a `#[derive(Deserialize)]` struct.
pub fn json<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("not the expected JSON: {e}"))
}
