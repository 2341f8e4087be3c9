//! One reader of Server-Sent Events at the wire level, for the tests that
//! check what a server sends byte by byte and for the benchmark, whose own
//! cost must stay small next to the server's. (`ci` itself follows streams
//! with `ci_client`, the product's reader, which reconnects; this one does
//! not, on purpose: it shows exactly what one connection carried.)
//!
//! Bytes go in as they arrive ([`SseBuffer::push`]); whole blocks (the lines
//! up to a blank line, `\n\n` or `\r\n\r\n`) come out ([`SseBuffer::next_block`])
//! parsed into their fields ([`SseBlock`]). What a block must hold is the
//! caller's to judge: the server's tests refuse unknown fields, the benchmark
//! skips what it does not know.

/// The fields of one block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseBlock {
    /// The `id:` field, when there is one.
    pub id: Option<String>,
    /// The `event:` field, when there is one.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` without any.
    pub data: Option<String>,
    /// Whether it held a `:` comment line (a keep-alive).
    pub comment: bool,
    /// Fields other than `id`, `event`, `data` and `retry`, as `name: value` lines.
    pub unknown: Vec<String>,
}

/// Bytes of a stream not yet split into blocks.
#[derive(Debug, Default)]
pub struct SseBuffer {
    buf: Vec<u8>,
}

impl SseBuffer {
    pub fn new() -> SseBuffer {
        SseBuffer::default()
    }

    /// Adds bytes as they came off the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole block, parsed (`Err` when it is not UTF-8, which an
    /// event stream must be); `None` until a blank line ends one.
    pub fn next_block(&mut self) -> Option<Result<SseBlock, std::str::Utf8Error>> {
        let (text_end, block_end) = find_blank_line(&self.buf)?;
        let block: Vec<u8> = self.buf.drain(..block_end).collect();
        Some(std::str::from_utf8(&block[..text_end]).map(parse_block))
    }

    /// What is left that no blank line has ended yet.
    pub fn rest(&self) -> &[u8] {
        &self.buf
    }
}

/// `(end of the block's text, end of its blank line)` of the first whole block.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The fields of one block's text (without its ending blank line).
pub fn parse_block(text: &str) -> SseBlock {
    let mut block = SseBlock::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with(':') {
            block.comment = true;
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => block.id = Some(value.to_string()),
            "event" => block.event = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => {}
            _ => block.unknown.push(line.to_string()),
        }
    }
    if !data.is_empty() {
        block.data = Some(data.join("\n"));
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_split_on_either_blank_line_and_keep_their_fields() {
        let mut sse = SseBuffer::new();
        sse.push(b": keep-alive\n\nid: 1\ndata: {\"type\":\"log\",");
        assert_eq!(
            sse.next_block(),
            Some(Ok(SseBlock {
                comment: true,
                ..SseBlock::default()
            }))
        );
        assert_eq!(sse.next_block(), None, "the second block is not whole yet");
        sse.push(b"\ndata: \"data\":\"hi\"}\n\nevent: x\r\ndata: 2\r\nfoo: bar\r\n\r\n");
        assert_eq!(
            sse.next_block(),
            Some(Ok(SseBlock {
                id: Some("1".into()),
                data: Some("{\"type\":\"log\",\n\"data\":\"hi\"}".into()),
                ..SseBlock::default()
            }))
        );
        assert_eq!(
            sse.next_block(),
            Some(Ok(SseBlock {
                event: Some("x".into()),
                data: Some("2".into()),
                unknown: vec!["foo: bar".into()],
                ..SseBlock::default()
            }))
        );
        assert!(sse.rest().is_empty());
        sse.push(b"data: \xff\n\n");
        assert!(matches!(sse.next_block(), Some(Err(_))));
    }
}
