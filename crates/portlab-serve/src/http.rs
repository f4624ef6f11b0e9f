//! HTTP/1.1 message framing shared by the server and the reverse proxy: how a message body is
//! delimited (RFC 9112 §6), connection persistence (§9.3), hop-by-hop headers (RFC 9110 §7.6.1)
//! and an incremental chunked-body scanner.

/// Largest request or response head we accept, bytes (nginx's default large buffer is 8 KB ×4).
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers we parse in one message.
pub(crate) const MAX_HEADERS: usize = 64;

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (requests without length, HEAD responses, 1xx/204/304).
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked` as the final coding.
    Chunked,
    /// A response without length: the body ends when the upstream closes.
    UntilClose,
}

/// The framing facts of a head, read from its headers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HeadFacts {
    pub(crate) content_length: Option<u64>,
    pub(crate) chunked: bool,
    pub(crate) conn_close: bool,
    pub(crate) conn_keep_alive: bool,
    /// A `Connection` header names other options: those headers are hop-by-hop too.
    pub(crate) conn_options: bool,
    /// A header that cannot be honoured: two different Content-Lengths, a non-chunked
    /// Transfer-Encoding, or an unparsable length (request smuggling guard, RFC 9112 §6.3).
    pub(crate) invalid: bool,
}

impl HeadFacts {
    /// Collects framing facts from parsed headers.
    pub(crate) fn read(headers: &[httparse::Header<'_>]) -> Self {
        let mut facts = HeadFacts::default();
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                match parse_content_length(h.value) {
                    Some(n) if facts.content_length.is_none_or(|m| m == n) => {
                        facts.content_length = Some(n)
                    }
                    _ => facts.invalid = true,
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only chunked as the last coding can be framed; anything else we cannot read.
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                if trim(last).eq_ignore_ascii_case(b"chunked") {
                    facts.chunked = true;
                } else {
                    facts.invalid = true;
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        facts.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        facts.conn_keep_alive = true;
                    } else if !token.is_empty() {
                        facts.conn_options = true;
                    }
                }
            }
        }
        facts
    }

    /// Whether the connection persists after this message (RFC 9112 §9.3): HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub(crate) fn keep_alive(&self, version: u8) -> bool {
        if version >= 1 {
            !self.conn_close
        } else {
            self.conn_keep_alive && !self.conn_close
        }
    }

    /// The body framing of a request (no length → no body).
    pub(crate) fn request_framing(&self) -> BodyFraming {
        if self.chunked {
            BodyFraming::Chunked
        } else {
            match self.content_length {
                Some(0) | None => BodyFraming::Empty,
                Some(n) => BodyFraming::Length(n),
            }
        }
    }

    /// The body framing of a response to a request (`head_request`: the method was HEAD).
    pub(crate) fn response_framing(&self, status: u16, head_request: bool) -> BodyFraming {
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            BodyFraming::Empty
        } else if self.chunked {
            BodyFraming::Chunked
        } else {
            match self.content_length {
                Some(0) => BodyFraming::Empty,
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::UntilClose,
            }
        }
    }
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// True for headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus
/// the framing headers the proxy writes itself.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// True when `name` is listed as a connection option in any `Connection` header (those headers
/// are hop-by-hop too, RFC 9110 §7.6.1).
pub(crate) fn named_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| {
            h.value
                .split(|&b| b == b',')
                .map(trim)
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
        })
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkedError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size.
    Size,
    /// After the size: skipping an extension up to CR LF.
    SizeLineRest,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside chunk data; `remaining` bytes left.
    Data,
    /// Expecting CR LF after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Expecting the LF ending the final empty line.
    FinalLf,
    Done,
}

/// Incremental scanner of a chunked body (RFC 9112 §7.1): tells how many input bytes belong to
/// the body and when it ends, so the body can be forwarded verbatim or discarded.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedScanner {
    state: ChunkState,
    remaining: u64,
    size_digits: u8,
    /// Total chunk-data bytes seen (payload, without framing).
    pub(crate) data_bytes: u64,
}

impl ChunkedScanner {
    pub(crate) fn new() -> Self {
        ChunkedScanner {
            state: ChunkState::Size,
            remaining: 0,
            size_digits: 0,
            data_bytes: 0,
        }
    }

    /// True once the final CR LF after the last chunk and trailers has been scanned.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `input`; returns how many bytes belong to the body (all of `input` unless the body
    /// ends inside it).
    pub(crate) fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                let take =
                    (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                i += take;
                self.remaining -= take as u64;
                self.data_bytes += take as u64;
                if self.remaining == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            self.step(input[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        use ChunkState::*;
        self.state = match (self.state, b) {
            (Size, b) if b.is_ascii_hexdigit() => {
                if self.size_digits >= 15 {
                    return Err(ChunkedError);
                }
                self.size_digits += 1;
                self.remaining = self.remaining * 16 + u64::from(hex_value(b));
                Size
            }
            (Size, b';' | b' ' | b'\t') if self.size_digits > 0 => SizeLineRest,
            (Size, b'\r') if self.size_digits > 0 => SizeLf,
            (SizeLineRest, b'\r') => SizeLf,
            (SizeLineRest, _) => SizeLineRest,
            (SizeLf, b'\n') => {
                self.size_digits = 0;
                if self.remaining == 0 {
                    TrailerStart
                } else {
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart, _) => TrailerLine,
            (TrailerLine, b'\n') => TrailerStart,
            (TrailerLine, _) => TrailerLine,
            (FinalLf, b'\n') => Done,
            _ => return Err(ChunkedError),
        };
        Ok(())
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Appends the chunk-size line for a chunk of `len` bytes (`{len:x}\r\n`) without `format!`.
pub(crate) fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number without `format!`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut n = n;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_scanner_finds_the_end_across_splits() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut s = ChunkedScanner::new();
            let a = s.scan(&body[..split]).unwrap();
            assert_eq!(a, split.min(end));
            let b = s.scan(&body[split..]).unwrap();
            assert_eq!(a + b, end, "split {split}");
            assert!(s.is_done());
            assert_eq!(s.data_bytes, 15);
        }
    }

    #[test]
    fn chunked_scanner_rejects_garbage() {
        assert_eq!(ChunkedScanner::new().scan(b"zz\r\n"), Err(ChunkedError));
        assert_eq!(ChunkedScanner::new().scan(b"3\r\nabcX"), Err(ChunkedError));
    }

    #[test]
    fn framing_rules() {
        let h = |name, value| httparse::Header { name, value };
        let facts = HeadFacts::read(&[h("Content-Length", b" 12 ".as_slice())]);
        assert_eq!(facts.request_framing(), BodyFraming::Length(12));
        assert_eq!(facts.response_framing(200, true), BodyFraming::Empty);
        assert_eq!(facts.response_framing(304, false), BodyFraming::Empty);
        let facts = HeadFacts::read(&[h("Transfer-Encoding", b"gzip, chunked".as_slice())]);
        assert_eq!(facts.response_framing(200, false), BodyFraming::Chunked);
        let facts = HeadFacts::read(&[]);
        assert_eq!(facts.response_framing(200, false), BodyFraming::UntilClose);
        assert_eq!(facts.request_framing(), BodyFraming::Empty);
        assert!(facts.keep_alive(1));
        assert!(!facts.keep_alive(0));
        let facts = HeadFacts::read(&[
            h("Content-Length", b"1".as_slice()),
            h("Content-Length", b"2".as_slice()),
        ]);
        assert!(facts.invalid);
        let facts = HeadFacts::read(&[h("Connection", b"Keep-Alive, Close".as_slice())]);
        assert!(!facts.keep_alive(1));
    }

    #[test]
    fn number_formatting() {
        let mut out = Vec::new();
        push_chunk_size(&mut out, 0x1a2b);
        push_decimal(&mut out, 10_485_760);
        assert_eq!(out, b"1a2b\r\n10485760");
    }
}
