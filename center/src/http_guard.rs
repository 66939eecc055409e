//! Request heads too large for the HTTP parser, answered the API's way.
//!
//! actix-http refuses a request line over 65,534 bytes (a bare 400), a head over 128 KiB or
//! with more than 96 header fields (a bare 431), before any handler or middleware runs. A v2
//! caller is promised an HTTP-200 envelope with an error code whatever it sends, so the
//! center's sockets are wrapped in [`GuardedStream`]: it follows request boundaries (heads, then
//! `Content-Length` or chunked bodies), hands actix each head only once it is whole and
//! within the parser's limits, and when one is not, gives actix an end of input instead.
//! Actix answers the requests before it, then shuts the socket down, and the guard writes
//! its own answer for the refused request just before the shutdown: a `[403.2]` envelope for
//! `/api/v2/` paths, a bare 414 or 431 with a reason for others. The connection then closes,
//! as it would after a parse error.

use crate::error::ApiError;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request target the parser takes (`http::Uri` holds at most this).
pub const MAX_TARGET_BYTES: usize = 65_534;
/// The largest head: actix-http gives up on a partial head at 128 KiB.
pub const MAX_HEAD_BYTES: usize = 128 * 1024 - 1;
/// Header fields in one head: actix-http parses at most 96.
pub const MAX_HEADER_FIELDS: usize = 96;

/// Why a head was refused, and for which path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The head's bytes up to the target's first 64 bytes: enough to tell an API path.
    pub target_start: String,
    pub status: u16,
}

impl Refusal {
    /// The whole HTTP response, ready to write.
    pub fn response(&self) -> Vec<u8> {
        let (status_line, content_type, body) = if self.target_start.starts_with("/api/v2/") {
            let envelope = ApiError::BadParam(self.reason.clone()).envelope();
            (
                "200 OK".to_string(),
                "application/json",
                serde_json::to_vec(&envelope).unwrap_or_default(),
            )
        } else {
            let phrase = if self.status == 414 {
                "URI Too Long"
            } else {
                "Request Header Fields Too Large"
            };
            (
                format!("{} {phrase}", self.status),
                "text/plain; charset=utf-8",
                self.reason.clone().into_bytes(),
            )
        };
        let mut response = format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        response
    }
}

/// Where the scanner is in the byte stream of one connection.
#[derive(Debug)]
enum Scan {
    /// Collecting a head (held back until whole).
    Head,
    /// Body bytes still to pass.
    Body(u64),
    /// A chunked body: the size line so far.
    ChunkSize(Vec<u8>),
    /// Chunk data and its CRLF still to pass.
    ChunkData(u64),
    /// Trailer lines after the last chunk: the length of the current line so far.
    Trailer(usize),
    /// Not HTTP/1 requests any more (an upgrade, a head actix will refuse as malformed):
    /// everything passes, actix decides.
    Passthrough,
    Refused,
}

/// Follows request boundaries in what a client sends.
#[derive(Debug)]
pub struct RequestScanner {
    scan: Scan,
    head: Vec<u8>,
}

impl Default for RequestScanner {
    fn default() -> Self {
        RequestScanner {
            scan: Scan::Head,
            head: Vec::new(),
        }
    }
}

impl RequestScanner {
    /// Takes what the client sent; appends to `pass` what may go to the parser now. A refusal
    /// is returned once; from then on nothing passes.
    pub fn feed(&mut self, mut input: &[u8], pass: &mut Vec<u8>) -> Option<Refusal> {
        while !input.is_empty() {
            match &mut self.scan {
                Scan::Refused => return None,
                Scan::Passthrough => {
                    pass.extend_from_slice(input);
                    return None;
                }
                Scan::Body(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    pass.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.scan = Scan::Head;
                    }
                }
                Scan::ChunkData(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    pass.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.scan = Scan::ChunkSize(Vec::new());
                    }
                }
                Scan::ChunkSize(line) => {
                    let end = input.iter().position(|&b| b == b'\n');
                    let n = end.map_or(input.len(), |at| at + 1);
                    line.extend_from_slice(&input[..n]);
                    pass.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if end.is_none() {
                        if line.len() > 1024 {
                            self.scan = Scan::Passthrough;
                        }
                        continue;
                    }
                    self.scan = match httparse::parse_chunk_size(line) {
                        Ok(httparse::Status::Complete((_, 0))) => Scan::Trailer(0),
                        // The chunk, then its CRLF.
                        Ok(httparse::Status::Complete((_, size))) => {
                            Scan::ChunkData(size.saturating_add(2))
                        }
                        _ => Scan::Passthrough,
                    };
                }
                Scan::Trailer(line_len) => {
                    let byte = input[0];
                    pass.push(byte);
                    input = &input[1..];
                    match byte {
                        b'\n' if *line_len == 0 => self.scan = Scan::Head,
                        b'\n' => *line_len = 0,
                        b'\r' => {}
                        _ => *line_len += 1,
                    }
                }
                Scan::Head => {
                    let before = input;
                    let room = (MAX_HEAD_BYTES + 1).saturating_sub(self.head.len());
                    let n = room.min(input.len());
                    self.head.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    // A head can only end at a newline: no parse of a head still arriving
                    // without one (and a slow sender costs one parse per line, not per byte).
                    let verdict = if before[..n].contains(&b'\n') {
                        self.judge_head()
                    } else {
                        HeadVerdict::Partial
                    };
                    match verdict {
                        HeadVerdict::Partial => {
                            if let Some(refusal) = self.partial_refusal() {
                                self.scan = Scan::Refused;
                                return Some(refusal);
                            }
                        }
                        HeadVerdict::Refuse(refusal) => {
                            self.scan = Scan::Refused;
                            return Some(refusal);
                        }
                        HeadVerdict::Pass { len, next } => {
                            // The head was partial before these n bytes, so what follows it
                            // came in them: give those back to the input.
                            let excess = self.head.len() - len;
                            self.head.truncate(len);
                            pass.append(&mut self.head);
                            self.scan = next;
                            input = &before[n - excess..];
                        }
                        HeadVerdict::Malformed => {
                            pass.append(&mut self.head);
                            self.scan = Scan::Passthrough;
                        }
                    }
                }
            }
        }
        None
    }

    fn judge_head(&self) -> HeadVerdict {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
        let mut request = httparse::Request::new(&mut fields);
        match request.parse(&self.head) {
            Ok(httparse::Status::Partial) => HeadVerdict::Partial,
            Err(httparse::Error::TooManyHeaders) => HeadVerdict::Refuse(self.refusal(
                431,
                format!("request head with more than {MAX_HEADER_FIELDS} header fields"),
            )),
            Err(_) => HeadVerdict::Malformed,
            Ok(httparse::Status::Complete(len)) => {
                if request
                    .path
                    .is_some_and(|path| path.len() > MAX_TARGET_BYTES)
                {
                    return HeadVerdict::Refuse(self.target_refusal());
                }
                if len > MAX_HEAD_BYTES {
                    return HeadVerdict::Refuse(self.head_refusal());
                }
                let mut next = Scan::Head;
                for field in request.headers.iter() {
                    let value = String::from_utf8_lossy(field.value);
                    if field.name.eq_ignore_ascii_case("transfer-encoding")
                        && value.to_ascii_lowercase().contains("chunked")
                    {
                        next = Scan::ChunkSize(Vec::new());
                    } else if field.name.eq_ignore_ascii_case("content-length") {
                        match value.trim().parse::<u64>() {
                            Ok(0) => {}
                            Ok(length) if matches!(next, Scan::Head) => next = Scan::Body(length),
                            Ok(_) => {}
                            Err(_) => return HeadVerdict::Malformed,
                        }
                    } else if field.name.eq_ignore_ascii_case("upgrade") {
                        next = Scan::Passthrough;
                    }
                }
                if request.method == Some("CONNECT") {
                    next = Scan::Passthrough;
                }
                HeadVerdict::Pass { len, next }
            }
        }
    }

    /// A partial head already past a limit.
    fn partial_refusal(&self) -> Option<Refusal> {
        let line_end = self.head.iter().position(|&b| b == b'\n');
        let line = &self.head[..line_end.unwrap_or(self.head.len())];
        // "GET " + target: a request line longer than the target limit plus its method and
        // version is over it, whether or not its end has come.
        if line.len() > MAX_TARGET_BYTES + 32 {
            return Some(self.target_refusal());
        }
        (self.head.len() > MAX_HEAD_BYTES).then(|| self.head_refusal())
    }

    fn target_refusal(&self) -> Refusal {
        self.refusal(
            414,
            format!("request target (path and query) over the limit of {MAX_TARGET_BYTES} bytes: send the parameters as a form body"),
        )
    }

    fn head_refusal(&self) -> Refusal {
        self.refusal(
            431,
            format!("request head over the limit of {MAX_HEAD_BYTES} bytes"),
        )
    }

    fn refusal(&self, status: u16, reason: String) -> Refusal {
        let text = String::from_utf8_lossy(&self.head[..self.head.len().min(256)]).into_owned();
        let target_start = text
            .trim_start()
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect();
        Refusal {
            reason,
            target_start,
            status,
        }
    }
}

enum HeadVerdict {
    Partial,
    Pass { len: usize, next: Scan },
    Refuse(Refusal),
    Malformed,
}

/// A client connection as actix-http sees it: requests pass once [`RequestScanner`] has
/// judged them, a refused one ends the input and is answered at shutdown.
pub struct GuardedStream<IO> {
    io: IO,
    scanner: RequestScanner,
    /// Judged bytes actix has not read yet, from `passed_at`.
    passed: Vec<u8>,
    passed_at: usize,
    refusal: Option<Refusal>,
    /// The refusal's response, and how much of it is written.
    answer: Option<(Vec<u8>, usize)>,
    read_buf: Box<[u8]>,
}

impl<IO> GuardedStream<IO> {
    pub fn new(io: IO) -> Self {
        GuardedStream {
            io,
            scanner: RequestScanner::default(),
            passed: Vec::new(),
            passed_at: 0,
            refusal: None,
            answer: None,
            read_buf: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for GuardedStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.passed_at < this.passed.len() {
                let ready = &this.passed[this.passed_at..];
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.passed_at += n;
                if this.passed_at == this.passed.len() {
                    this.passed.clear();
                    this.passed_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.refusal.is_some() {
                // The end of input: actix finishes what it has, then shuts down.
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.read_buf);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            let filled = read.filled();
            if filled.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Some(refusal) = this.scanner.feed(filled, &mut this.passed) {
                log::info!("http: refused a request head: {}", refusal.reason);
                this.refusal = Some(refusal);
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for GuardedStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(refusal) = this.refusal.take() {
            this.answer = Some((refusal.response(), 0));
        }
        if let Some((answer, written)) = &mut this.answer {
            while *written < answer.len() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &answer[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(
        scanner: &mut RequestScanner,
        input: &[u8],
        piece: usize,
    ) -> (Vec<u8>, Option<Refusal>) {
        let mut pass = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            if let Some(refusal) = scanner.feed(chunk, &mut pass) {
                return (pass, Some(refusal));
            }
        }
        (pass, None)
    }

    #[test]
    fn requests_within_the_limits_pass_whole_in_any_pieces() {
        let requests = b"POST /api/v2/rt/exec HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\n\r\n\
            POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
            GET /last HTTP/1.1\r\n\r\n";
        for piece in [1, 2, 7, 64, 4096] {
            let (pass, refusal) = feed_all(&mut RequestScanner::default(), requests, piece);
            assert_eq!(refusal, None, "piece {piece}");
            assert_eq!(pass, requests.to_vec(), "piece {piece}");
        }
    }

    #[test]
    fn a_head_is_held_back_until_it_is_whole() {
        let mut scanner = RequestScanner::default();
        let mut pass = Vec::new();
        scanner.feed(b"GET /a HTTP/1.1\r\nhost: x\r\n", &mut pass);
        assert!(pass.is_empty());
        scanner.feed(b"\r\n", &mut pass);
        assert_eq!(pass, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n");
    }

    #[test]
    fn an_over_long_target_is_refused_after_the_requests_before_it() {
        let mut input = b"GET /api/v2/info/agents?a=1 HTTP/1.1\r\n\r\n".to_vec();
        let first = input.len();
        input.extend_from_slice(b"GET /api/v2/rt/exec?param=");
        input.extend(std::iter::repeat_n(b'x', 70_000));
        input.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        for piece in [100, 16_384, 200_000] {
            let (pass, refusal) = feed_all(&mut RequestScanner::default(), &input, piece);
            assert_eq!(pass, input[..first].to_vec(), "piece {piece}");
            let refusal = refusal.expect("refused");
            assert_eq!(refusal.status, 414);
            assert!(refusal.target_start.starts_with("/api/v2/rt/exec"));
            let response = String::from_utf8(refusal.response()).unwrap();
            assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
            assert!(
                response.contains("403.2") && response.contains("65534"),
                "{response}"
            );
        }
    }

    #[test]
    fn an_over_large_head_or_too_many_fields_is_refused() {
        let mut big = b"GET /ui/ HTTP/1.1\r\n".to_vec();
        for n in 0..3_000 {
            big.extend_from_slice(format!("x-field-{n}: {}\r\n", "v".repeat(40)).as_bytes());
        }
        big.extend_from_slice(b"\r\n");
        let (pass, refusal) = feed_all(&mut RequestScanner::default(), &big, 8192);
        assert!(pass.is_empty());
        let refusal = refusal.expect("refused");
        assert_eq!(refusal.status, 431);
        let response = String::from_utf8(refusal.response()).unwrap();
        assert!(response.starts_with("HTTP/1.1 431 "), "{response}");

        let mut many = b"GET /api/v2/info/agents HTTP/1.1\r\n".to_vec();
        for n in 0..100 {
            many.extend_from_slice(format!("x-{n}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (_, refusal) = feed_all(&mut RequestScanner::default(), &many, 4096);
        let refusal = refusal.expect("refused");
        assert!(refusal.reason.contains("96 header fields"), "{refusal:?}");
    }

    #[test]
    fn body_bytes_are_never_read_as_heads() {
        // A body full of blank lines and request-looking text, longer than any head limit.
        let body = "GET /evil HTTP/1.1\r\n\r\n".repeat(20_000);
        let mut input = format!(
            "POST /api/v2/app/upload HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        input.extend_from_slice(body.as_bytes());
        input.extend_from_slice(b"GET /after HTTP/1.1\r\n\r\n");
        let (pass, refusal) = feed_all(&mut RequestScanner::default(), &input, 5000);
        assert_eq!(refusal, None);
        assert_eq!(pass.len(), input.len());
    }

    #[test]
    fn malformed_heads_are_left_to_the_parser() {
        let (pass, refusal) = feed_all(
            &mut RequestScanner::default(),
            b"\x00\x01garbage\r\n\r\nmore",
            3,
        );
        assert_eq!(refusal, None);
        assert_eq!(pass, b"\x00\x01garbage\r\n\r\nmore".to_vec());
    }
}
