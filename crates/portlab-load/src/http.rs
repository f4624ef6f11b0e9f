//! HTTP/1.1 on the wire: the request is serialized once per run ([`build_request`]); responses
//! are parsed without allocation by [`ResponseParser`], a sans-I/O state machine fed from the
//! connection's read buffer (heads via httparse, bodies framed per RFC 9112 §6: no body for
//! HEAD/1xx/204/304, chunked, Content-Length, or until the server closes).

use crate::config::{ConnectionPolicy, LoadConfig, Target};

/// Most response header lines we accept (RFC 9112 sets no limit; nginx sends about 8).
const MAX_HEADERS: usize = 96;
/// Longest chunk-extension or trailer line we accept.
const MAX_LINE: u32 = 64 * 1024;

/// Serializes the request head and body once: request line, Host, User-Agent (no Accept: its
/// absence means any type, RFC 9110 §12.5.1, and every header costs the server parsing),
/// `Connection: close` for [`ConnectionPolicy::ServerCloses`], the user's headers, then
/// Content-Type/Content-Length when there is a body.
pub(crate) fn build_request(config: &LoadConfig, target: &Target, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + config.body.len());
    let has = |name: &str| {
        config
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    out.extend_from_slice(config.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !has("host") {
        let default_port = if target.tls { 443 } else { 80 };
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        let host_line = if target.port == default_port {
            format!("Host: {host}\r\n")
        } else {
            format!("Host: {host}:{}\r\n", target.port)
        };
        out.extend_from_slice(host_line.as_bytes());
    }
    if !has("user-agent") {
        out.extend_from_slice(
            concat!("User-Agent: portlab/", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes(),
        );
    }
    if config.policy == ConnectionPolicy::ServerCloses && !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in &config.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some(ct) = &config.content_type {
        if !has("content-type") {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
    }
    let method_takes_body = !matches!(
        config.method.as_str(),
        "GET" | "HEAD" | "DELETE" | "OPTIONS"
    );
    if (!config.body.is_empty() || method_takes_body) && !has("content-length") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", config.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&config.body);
    out
}

/// A complete response, as far as the engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    /// Final status code (1xx interim responses are skipped).
    pub status: u16,
    /// `false` when the connection cannot carry another request: `Connection: close`, HTTP/1.0
    /// without keep-alive, or a body delimited by the server closing.
    pub reusable: bool,
    /// Body bytes received (after chunk framing is removed).
    pub body_bytes: u64,
}

/// Why parsing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Not HTTP/1.x, bad framing, or conflicting lengths.
    Invalid,
    /// The head does not fit the read buffer.
    HeadTooLarge,
}

/// What [`ResponseParser::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read more; `consumed` bytes of the input were used (a partial head is never consumed).
    NeedMore { consumed: usize },
    /// The response is complete after `consumed` bytes of the input; bytes after it are left.
    Done { consumed: usize, response: Response },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u8 },
    Extension { value: u64 },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer { line_len: u32 },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Head,
    Body {
        body: Body,
        status: u16,
        reusable: bool,
    },
}

/// Parses one response at a time. Reset with [`ResponseParser::new`] before each request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseParser {
    state: State,
    head_request: bool,
    body_bytes: u64,
}

impl ResponseParser {
    /// A parser for the response to one request; `head_request` means the response has no body.
    pub fn new(head_request: bool) -> Self {
        Self {
            state: State::Head,
            head_request,
            body_bytes: 0,
        }
    }

    /// Feeds the unconsumed bytes of the read buffer. A partial head is not consumed (the caller
    /// keeps it and appends more); body bytes are always consumed.
    pub fn feed(&mut self, input: &[u8]) -> Result<Step, ParseError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Head => match self.parse_head(&input[pos..])? {
                    None => return Ok(Step::NeedMore { consumed: pos }),
                    Some(n) => pos += n,
                },
                State::Body {
                    body,
                    status,
                    reusable,
                } => {
                    let (used, next) = self.advance_body(body, &input[pos..])?;
                    pos += used;
                    match next {
                        Some(b) => {
                            self.state = State::Body {
                                body: b,
                                status,
                                reusable,
                            };
                            return Ok(Step::NeedMore { consumed: pos });
                        }
                        None => {
                            let response = Response {
                                status,
                                reusable,
                                body_bytes: self.body_bytes,
                            };
                            return Ok(Step::Done {
                                consumed: pos,
                                response,
                            });
                        }
                    }
                }
            }
        }
    }

    /// The server closed the connection: completes a close-delimited body, otherwise the
    /// response was cut short.
    pub fn finish_at_eof(&self) -> Option<Response> {
        match self.state {
            State::Body {
                body: Body::UntilClose,
                status,
                ..
            } => Some(Response {
                status,
                reusable: false,
                body_bytes: self.body_bytes,
            }),
            _ => None,
        }
    }

    /// Parses a head at the start of `input`; `None` when incomplete. Interim 1xx heads are
    /// skipped by staying in the head state.
    fn parse_head(&mut self, input: &[u8]) -> Result<Option<usize>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadTooLarge),
            Err(_) => return Err(ParseError::Invalid),
        };
        let status = resp.code.unwrap_or(0);
        let http10 = resp.version == Some(0);
        if (100..200).contains(&status) && status != 101 {
            return Ok(Some(n)); // interim response (RFC 9110 §15.2): the final one follows
        }
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut close = http10;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = parse_length(h.value).ok_or(ParseError::Invalid)?;
                if content_length.is_some_and(|old| old != v) {
                    return Err(ParseError::Invalid);
                }
                content_length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = last_token_is(h.value, b"chunked");
                if !chunked {
                    // Another final coding: the body runs until the server closes (RFC 9112 §6.3).
                    content_length = None;
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                if has_token(h.value, b"close") {
                    close = true;
                } else if http10 && has_token(h.value, b"keep-alive") {
                    close = false;
                }
            }
        }
        let no_body = self.head_request || status == 204 || status == 304 || status == 101;
        let body = if no_body {
            Body::Length(0)
        } else if chunked {
            Body::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            })
        } else if let Some(len) = content_length {
            Body::Length(len)
        } else {
            Body::UntilClose
        };
        let reusable = !close && body != Body::UntilClose && status != 101;
        self.state = State::Body {
            body,
            status,
            reusable,
        };
        Ok(Some(n))
    }

    /// Consumes body bytes; returns bytes used and the next body state (`None` when complete).
    fn advance_body(
        &mut self,
        body: Body,
        input: &[u8],
    ) -> Result<(usize, Option<Body>), ParseError> {
        match body {
            Body::Length(remaining) => {
                let take = remaining.min(input.len() as u64);
                self.body_bytes += take;
                let left = remaining - take;
                Ok((take as usize, (left > 0).then_some(Body::Length(left))))
            }
            Body::UntilClose => {
                self.body_bytes += input.len() as u64;
                Ok((input.len(), Some(Body::UntilClose)))
            }
            Body::Chunked(chunk) => {
                let (used, next) = self.advance_chunked(chunk, input)?;
                Ok((used, next.map(Body::Chunked)))
            }
        }
    }

    fn advance_chunked(
        &mut self,
        mut st: Chunk,
        input: &[u8],
    ) -> Result<(usize, Option<Chunk>), ParseError> {
        let mut i = 0;
        while i < input.len() {
            if let Chunk::Data(n) = st {
                let take = n.min((input.len() - i) as u64);
                self.body_bytes += take;
                i += take as usize;
                st = if n == take {
                    Chunk::DataCr
                } else {
                    Chunk::Data(n - take)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            st = match (st, b) {
                (Chunk::Size { value, digits }, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    if digits >= 15 {
                        return Err(ParseError::Invalid);
                    }
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    Chunk::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { value, digits: 1.. }, b';' | b' ' | b'\t') => {
                    Chunk::Extension { value }
                }
                (Chunk::Size { value, digits: 1.. } | Chunk::Extension { value }, b'\r') => {
                    Chunk::SizeLf { value }
                }
                (Chunk::Size { value, digits: 1.. } | Chunk::Extension { value }, b'\n')
                | (Chunk::SizeLf { value }, b'\n') => chunk_after_size(value),
                (Chunk::Extension { value }, _) => Chunk::Extension { value },
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                (Chunk::Trailer { line_len }, b'\r') => Chunk::Trailer { line_len },
                (Chunk::Trailer { line_len: 0 }, b'\n') => return Ok((i, None)),
                (Chunk::Trailer { .. }, b'\n') => Chunk::Trailer { line_len: 0 },
                (Chunk::Trailer { line_len }, _) if line_len < MAX_LINE => Chunk::Trailer {
                    line_len: line_len + 1,
                },
                _ => return Err(ParseError::Invalid),
            };
        }
        Ok((i, Some(st)))
    }
}

/// After a chunk-size line: data, or the trailer section after the last (zero) chunk.
fn chunk_after_size(value: u64) -> Chunk {
    if value == 0 {
        Chunk::Trailer { line_len: 0 }
    } else {
        Chunk::Data(value)
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `true` when the comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .next_back()
        .is_some_and(|part| part.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` split into pieces of `step` bytes, keeping an unconsumed partial head the
    /// way the engine's read buffer does; returns the response and bytes left after it.
    fn parse_in_pieces(
        input: &[u8],
        head_request: bool,
        step: usize,
    ) -> Result<(Response, usize), ParseError> {
        let mut p = ResponseParser::new(head_request);
        let mut start = 0;
        let mut end = 0;
        while end < input.len() {
            end = (end + step).min(input.len());
            match p.feed(&input[start..end])? {
                Step::NeedMore { consumed } => start += consumed,
                Step::Done { consumed, response } => return Ok((response, end - start - consumed)),
            }
        }
        p.finish_at_eof().map(|r| (r, 0)).ok_or(ParseError::Invalid)
    }

    fn all_splits(input: &[u8], head_request: bool) -> (Response, usize) {
        let first = parse_in_pieces(input, head_request, input.len()).expect("parses whole");
        for step in 1..input.len() {
            let r = parse_in_pieces(input, head_request, step).expect("parses in pieces");
            assert_eq!(r, first, "step {step}");
        }
        first
    }

    #[test]
    fn content_length_body() {
        let (r, left) = all_splits(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(
            r,
            Response {
                status: 200,
                reusable: true,
                body_bytes: 5
            }
        );
        assert_eq!(left, 0);
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        let (r, left) = all_splits(raw, false);
        assert_eq!(
            r,
            Response {
                status: 200,
                reusable: true,
                body_bytes: 15
            }
        );
        assert_eq!(left, 0);
    }

    #[test]
    fn head_response_has_no_body_despite_length() {
        let (r, _) = all_splits(b"HTTP/1.1 200 OK\r\nContent-Length: 612\r\n\r\n", true);
        assert_eq!(r.body_bytes, 0);
        assert!(r.reusable);
    }

    #[test]
    fn interim_1xx_is_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let (r, _) = all_splits(raw, false);
        assert_eq!(r.status, 201);
        assert_eq!(r.body_bytes, 2);
    }

    #[test]
    fn connection_close_and_http10() {
        let (r, _) = all_splits(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!r.reusable);
        let (r, _) = all_splits(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false);
        assert!(!r.reusable);
        let (r, _) = all_splits(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
            false,
        );
        assert!(r.reusable);
    }

    #[test]
    fn body_until_close() {
        let (r, _) = parse_in_pieces(b"HTTP/1.1 200 OK\r\n\r\nabcdef", false, 3).expect("eof body");
        assert_eq!(
            r,
            Response {
                status: 200,
                reusable: false,
                body_bytes: 6
            }
        );
    }

    #[test]
    fn no_body_statuses() {
        let (r, left) = all_splits(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((r.status, r.body_bytes, left), (204, 0, 0));
        let (r, _) = all_splits(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            false,
        );
        assert_eq!(r.body_bytes, 0);
    }

    #[test]
    fn garbage_and_bad_framing_fail() {
        assert_eq!(
            parse_in_pieces(b"garbage garbage\r\n\r\n", false, 100),
            Err(ParseError::Invalid)
        );
        assert_eq!(
            parse_in_pieces(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
                false,
                100
            ),
            Err(ParseError::Invalid)
        );
        assert_eq!(
            parse_in_pieces(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                false,
                100
            ),
            Err(ParseError::Invalid)
        );
        // cut short: a Content-Length body that never completes is not a response
        assert_eq!(
            parse_in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false, 4),
            Err(ParseError::Invalid)
        );
    }

    #[test]
    fn leftover_after_response_is_reported() {
        let (_, left) = parse_in_pieces(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxEXTRA",
            false,
            100,
        )
        .expect("ok");
        assert_eq!(left, 5);
    }
}
