//! Incremental decoder for `Transfer-Encoding: chunked` response bodies from backends (RFC 9112 §7.1).
//!
//! Backends are plain HTTP/1.1 servers Juggler talks to over its own pooled connections, so it
//! decodes their chunked bodies itself rather than handing the socket to a general client: the
//! decoded pieces are zero-copy slices of the connection's read buffer.

use bytes::{Buf, Bytes, BytesMut};

/// The largest chunk-size line (hex digits plus extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// The largest trailer section accepted (trailers are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a `hex-size[;ext]\r\n` line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data: its `\r\n`.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines up to an empty line.
    Trailers {
        seen: usize,
    },
    Done,
}

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete next piece: read more from the socket and call again.
    NeedMore,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct ChunkedError(pub &'static str);

#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    /// Consumes what it can from the front of `buf` and returns the next piece of body data.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkedError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(line_end) = find_crlf(buf, MAX_SIZE_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    self.state = if size == 0 {
                        State::Trailers { seen: 0 }
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers { seen } => {
                    let Some(line_end) = find_crlf(buf, MAX_TRAILERS - seen)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(line_end + 2);
                    self.state = if line_end == 0 {
                        State::Done
                    } else {
                        State::Trailers {
                            seen: seen + line_end + 2,
                        }
                    };
                }
            }
        }
    }
}

/// Position of the first `\r\n` in `buf`, refusing lines longer than `limit` and a bare `\n` or
/// `\r` (one reader's line end where another sees none: the root of chunk smuggling).
fn find_crlf(buf: &[u8], limit: usize) -> Result<Option<usize>, ChunkedError> {
    match buf.iter().position(|&byte| byte == b'\n') {
        Some(0) => Err(ChunkedError("bare LF")),
        Some(newline) if buf[newline - 1] == b'\r' => {
            if buf[..newline - 1].contains(&b'\r') {
                return Err(ChunkedError("bare CR"));
            }
            Ok(Some(newline - 1))
        }
        Some(_) => Err(ChunkedError("bare LF")),
        None if buf.len() > limit => Err(ChunkedError("line too long")),
        None => Ok(None),
    }
}

/// Parses `1a3f` or `1a3f;name=value` (extensions are ignored, as RFC 9112 allows).
fn parse_size(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits = match line.iter().position(|&byte| byte == b';') {
        Some(semicolon) => &line[..semicolon],
        None => line,
    };
    let digits = trim_trailing_whitespace(digits);
    if digits.is_empty() || digits.len() > 15 {
        return Err(ChunkedError("bad chunk size"));
    }
    let mut size = 0u64;
    for &digit in digits {
        let value = (digit as char)
            .to_digit(16)
            .ok_or(ChunkedError("bad chunk size"))?;
        size = size * 16 + u64::from(value);
    }
    Ok(size)
}

fn trim_trailing_whitespace(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|&byte| byte != b' ' && byte != b'\t')
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split_every: usize) -> Result<Vec<u8>, ChunkedError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(split_every) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(data) => out.extend_from_slice(&data),
                    Decoded::NeedMore => break,
                    Decoded::Done => return Ok(out),
                }
            }
        }
        Err(ChunkedError("incomplete"))
    }

    #[test]
    fn decodes_whole_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in [1, 2, 3, 7, body.len()] {
            assert_eq!(decode_all(body, split).unwrap(), b"hello, world");
        }
    }

    #[test]
    fn refuses_malformed_framing() {
        assert!(decode_all(b"zz\r\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"5\nhello\r\n0\r\n\r\n", 64).is_err());
        assert!(decode_all(b"fffffffffffffffff\r\n", 64).is_err());
        assert!(decode_all(b"\r\n", 64).is_err());
        for split in [1, 64] {
            assert!(decode_all(b"5;a\rb\r\nhello\r\n0\r\n\r\n", split).is_err());
            assert!(decode_all(b"5\r\nhello\r\n0\r\nx: a\rb\r\n\r\n", split).is_err());
        }
    }
}
