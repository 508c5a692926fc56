//! Entry points for the fuzz targets (`tests/fuzz`) and their regression tests.

use crate::backend::chunked::{ChunkedDecoder, Decoded};
use crate::proxy::request::RequestHead;

/// Feeds `pieces` to one chunked decoder in turn, as reads from a socket would arrive:
/// the body bytes and whether the last chunk ended it, or the decoder's error.
pub fn decode_chunked(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), &'static str> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = bytes::BytesMut::new();
    let mut body = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf).map_err(|error| error.0)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::NeedMore => break,
                Decoded::Done => return Ok((body, true)),
            }
        }
    }
    Ok((body, false))
}

/// How a parsed request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// Why Juggler refuses `request` with `400` before routing it, if it does.
pub fn request_ambiguity<B>(request: http::Request<B>) -> Option<&'static str> {
    crate::proxy::request_checks::ambiguity(&request.into_parts().0)
}

/// What a server made of a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Accepted: method, target, version, fields (names lowercase, in the order a header map
    /// keeps them: repeated names together) and framing.
    Accepted {
        method: String,
        target: String,
        version: http::Version,
        fields: Vec<(String, Vec<u8>)>,
        framing: RequestFraming,
    },
    /// Refused with this status.
    Refused(u16),
    /// Incomplete: the server is still waiting for the rest of the head.
    Incomplete,
}

impl HeadVerdict {
    /// `head`, whose target reads as `uri`.
    fn accepted(head: &impl RequestHead, uri: &http::Uri, framing: RequestFraming) -> HeadVerdict {
        // hyper's header map puts repeated names together: so does this, to compare like with
        // like (Juggler keeps the client's order).
        let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, value) in head.fields() {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            let at = fields
                .iter()
                .rposition(|(known, _)| *known == name)
                .map_or(fields.len(), |at| at + 1);
            fields.insert(at, (name, value.to_vec()));
        }
        HeadVerdict::Accepted {
            method: head.method().to_string(),
            target: uri.to_string(),
            version: head.version(),
            fields,
            framing,
        }
    }
}

/// Juggler's verdict on `input` as a request head (`max_head`: the header size limit).
pub fn juggler_verdict(input: &[u8], max_head: usize) -> HeadVerdict {
    use crate::client::http1::{parse_head, BodyFraming};
    let mut buf = bytes::BytesMut::from(input);
    let parsed = match parse_head(&mut buf, max_head) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return HeadVerdict::Incomplete,
        Err(error) => return HeadVerdict::Refused(error.status().as_u16()),
    };
    let framing = match parsed.framing {
        BodyFraming::Empty => RequestFraming::Empty,
        BodyFraming::Length(len) => RequestFraming::Length(len),
        BodyFraming::Chunked => RequestFraming::Chunked,
    };
    HeadVerdict::accepted(&parsed.head, &parsed.head.uri(), framing)
}

/// hyper's HTTP/1.1 server's verdict on `input`, configured as Juggler configured it before it
/// parsed requests itself: what [`juggler_verdict`] is compared with. Needs a tokio runtime.
pub async fn hyper_verdict(input: &[u8], max_head: usize) -> HeadVerdict {
    use std::sync::{Arc, Mutex};

    use http_body::Body as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let seen: Arc<Mutex<Option<HeadVerdict>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let framing = if request.body().is_end_stream() {
                RequestFraming::Empty
            } else {
                match request.body().size_hint().exact() {
                    Some(len) => RequestFraming::Length(len),
                    None => RequestFraming::Chunked,
                }
            };
            let (head, _body) = request.into_parts();
            // The first request is the one compared; a pipelined one behind it is hyper's business.
            recorder
                .lock()
                .unwrap()
                .get_or_insert_with(|| HeadVerdict::accepted(&head, &head.uri, framing));
            async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            }
        });
    let (mut client, server) = tokio::io::duplex(input.len() + 64 * 1024);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(max_head)
        .max_buf_size(max_head.max(8192));
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let served = tokio::spawn(conn);
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.read_to_end(&mut answer),
    )
    .await;
    served.abort();
    if let Some(accepted) = seen.lock().unwrap().take() {
        return accepted;
    }
    let status = read
        .ok()
        .and_then(|_| answer.get(9..12))
        .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok());
    match status {
        Some(status) => HeadVerdict::Refused(status),
        None => HeadVerdict::Incomplete,
    }
}

/// Compares Juggler's and hyper's verdicts on `input`; `Err` says how they differ where they must
/// not. Juggler refuses on purpose what hyper lets through: `Content-Length` with
/// `Transfer-Encoding`, and bare-LF line ends (see `client::http1::head`).
pub async fn compare_with_hyper(input: &[u8], max_head: usize) -> Result<(), String> {
    let ours = juggler_verdict(input, max_head);
    let theirs = hyper_verdict(input, max_head).await;
    if ours == theirs {
        return Ok(());
    }
    let deliberate = matches!(ours, HeadVerdict::Refused(400))
        && matches!(theirs, HeadVerdict::Accepted { .. })
        && (has_bare_lf_line_end(input) || has_length_and_coding(input));
    // hyper reads a head only once the client stops sending or its buffer is full; a head hyper
    // still waits for may already be refused by Juggler (never the other way round).
    let sooner = theirs == HeadVerdict::Incomplete && matches!(ours, HeadVerdict::Refused(_));
    // Past the size limit, which refusal a malformed head gets depends on how its bytes arrived
    // (hyper parses again only once a read brings the head's end).
    let both_refused_oversized = input.len() >= max_head
        && matches!(ours, HeadVerdict::Refused(_))
        && matches!(theirs, HeadVerdict::Refused(_));
    if deliberate || sooner || both_refused_oversized {
        return Ok(());
    }
    Err(format!("juggler: {ours:?}\nhyper:   {theirs:?}"))
}

/// The request head at the front of `input`, as httparse delimits it (leading empty lines and all).
fn head_part(input: &[u8]) -> &[u8] {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    match httparse::Request::new(&mut fields).parse(input) {
        Ok(httparse::Status::Complete(len)) => &input[..len],
        _ => input,
    }
}

fn has_bare_lf_line_end(input: &[u8]) -> bool {
    let head = head_part(input);
    head.iter()
        .enumerate()
        .any(|(at, &byte)| byte == b'\n' && (at == 0 || head[at - 1] != b'\r'))
}

fn has_length_and_coding(input: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head_part(input)).to_ascii_lowercase();
    let field = |name: &str| head.lines().any(|line| line.trim_start().starts_with(name));
    field("content-length:") && field("transfer-encoding:")
}
