//! Reading a server's answer off a raw connection, for the kinds that write their requests by
//! hand: the status line, and one response framed by Content-Length or chunked.

use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::conn::Failure;

/// The status code of a response that starts with `HTTP/1.x NNN`.
pub(super) fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_ascii_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// Reads one response (head, then a body by Content-Length or chunked) and returns its status
/// and body. A connection that ends before a whole head is an error.
pub(super) async fn read_response<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(u16, Vec<u8>), Failure> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Err(Failure::Protocol("response head too long".into()));
        }
        match io.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(Failure::Protocol("closed".into())),
            Ok(0) => return Err(Failure::Protocol("closed mid-head".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Protocol("reset".into()));
            }
            Err(_) => return Err(Failure::Transport),
        }
    };
    let status = status_of(&buf).ok_or_else(|| Failure::Protocol("status line".into()))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut body = buf.split_off(head_end);
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
    };
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        while body.len() < len {
            read_more(io, &mut body).await?;
        }
        body.truncate(len);
    } else if header("transfer-encoding") == Some("chunked") {
        // Only the end matters here: the chunks are kept undecoded.
        while !body.ends_with(b"0\r\n\r\n") {
            if body.len() > 32 << 20 {
                return Err(Failure::Protocol("response body too long".into()));
            }
            read_more(io, &mut body).await?;
        }
    }
    Ok((status, body))
}

async fn read_more<R: AsyncRead + Unpin>(io: &mut R, body: &mut Vec<u8>) -> Result<(), Failure> {
    let mut chunk = [0u8; 4096];
    match io.read(&mut chunk).await {
        Ok(0) => Err(Failure::Protocol("closed mid-body".into())),
        Ok(n) => {
            body.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(_) => Err(Failure::Transport),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_by_length_and_chunked() {
        let mut input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1";
        assert_eq!(read_response(&mut input).await.unwrap(), (200, b"hi".to_vec()));
        let mut input: &[u8] =
            b"HTTP/1.1 413 Payload Too Large\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut input).await.unwrap().0, 413);
        let mut input: &[u8] = b"";
        assert!(read_response(&mut input).await.is_err());
    }
}
