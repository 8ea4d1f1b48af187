//! Splits a request body into per-event byte slices: a JSON array or NDJSON.

use serde_json::value::RawValue;

#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    /// A body starting with `[` that is not a JSON array.
    MalformedArray(String),
}

/// Items in body order. NDJSON lines are independent, so a bad line (even
/// invalid UTF-8) costs only that event; a broken JSON array is one bad item.
pub fn split(body: &[u8], ndjson_hint: bool) -> Result<Vec<&[u8]>, BatchError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if ndjson_hint || first != Some(&b'[') {
        return Ok(body
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.iter().all(|b| b.is_ascii_whitespace()))
            .collect());
    }
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| BatchError::MalformedArray(e.to_string()))?;
    Ok(items.into_iter().map(|raw| raw.get().as_bytes()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_keeps_bad_lines_as_their_own_items() {
        let body = b"{\"a\":1}\r\n\n{\xff}\n  \n{\"b\":2}";
        let items = split(body, false).unwrap();
        assert_eq!(items, vec![&b"{\"a\":1}"[..], &b"{\xff}"[..], &b"{\"b\":2}"[..]]);
    }

    #[test]
    fn json_array_yields_each_element_verbatim() {
        let items = split(br#" [ {"a":1}, {"b":[2,3]} ]"#, false).unwrap();
        assert_eq!(items, vec![&br#"{"a":1}"#[..], &br#"{"b":[2,3]}"#[..]]);
        assert!(matches!(split(b"[{\"a\":1}", false), Err(BatchError::MalformedArray(_))));
    }
}
