//! Following a chunked body (RFC 9112 §7.1) as it passes through, to know where it ends.
//! Strict: line ends are CRLF only, sizes are hex digits only, and a body that breaks the
//! grammar is refused rather than guessed at.

use super::http1::Malformed;

/// Follows a chunked body as it passes through, to find its end. The bytes are forwarded as
/// they are; only their framing is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    /// A hex digit of the current size line has been read.
    digits: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or the line's end.
    SizeWs,
    /// After the size: an extension, up to the line's end.
    Extension,
    /// Expecting the `\n` that ends the size line.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// Expecting the `\r` after a chunk's data.
    DataCr,
    /// Expecting the `\n` after a chunk's data.
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the `\n` that ends a trailer line.
    TrailerLf,
    /// Expecting the `\n` of the empty line that ends the body.
    EndLf,
    /// The body is complete.
    Done,
}

impl Chunked {
    /// Reads `data`; returns how many bytes belong to the body (all of them, unless the body
    /// ended inside `data`), or `Err` on a malformed chunk.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.digits = true;
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(Malformed)?;
                    }
                    _ if !self.digits => return Err(Malformed),
                    b';' => self.state = ChunkState::Extension,
                    b' ' | b'\t' => self.state = ChunkState::SizeWs,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(Malformed),
                },
                ChunkState::SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = ChunkState::Extension,
                    b'\r' => self.state = ChunkState::SizeLf,
                    _ => return Err(Malformed),
                },
                ChunkState::Extension => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    // A bare LF (or any control byte) inside the size line: not HTTP/1.1.
                    b'\t' => {}
                    0..=31 | 127 => return Err(Malformed),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.digits = false;
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = (data.len() - i).min(self.size as usize);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::EndLf,
                        b'\n' => return Err(Malformed),
                        _ => ChunkState::Trailer,
                    };
                }
                ChunkState::Trailer => match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' => return Err(Malformed),
                    _ => {}
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(Malformed);
                    }
                    self.state = ChunkState::Done;
                    return Ok(i + 1);
                }
                ChunkState::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// Decodes a whole chunked body (as [`Chunked`] found it) into `out`: the data of its chunks,
/// without sizes, extensions or trailers.
pub fn decode(body: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Malformed)?;
        let size_part = &rest[..line_end];
        let digits = size_part
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let size = std::str::from_utf8(&size_part[..digits])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or(Malformed)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(()); // trailers are not forwarded
        }
        let data = rest.get(..size).ok_or(Malformed)?;
        out.extend_from_slice(data);
        rest = rest.get(size + 2..).ok_or(Malformed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_chunks_split_anywhere() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let a = c.feed(&body[..split]).unwrap();
            assert_eq!(a, split.min(end));
            if split < end {
                assert!(!c.done());
                assert_eq!(c.feed(&body[split..]).unwrap(), end - split);
            }
            assert!(c.done(), "split at {split}");
        }
        assert!(Chunked::default().feed(b"zz\r\n").is_err());
        assert!(
            Chunked::default().feed(b" 5\r\n").is_err(),
            "no digit before the space"
        );
        assert!(
            Chunked::default().feed(b"5 5\r\n").is_err(),
            "a second number"
        );
        assert!(
            Chunked::default().feed(b"\r\n").is_err(),
            "an empty size line"
        );
        let mut c = Chunked::default();
        assert_eq!(c.feed(b"3 ;x\r\nabc\r\n0\r\n\r\n").unwrap(), 16);
        assert!(c.done());
        assert!(Chunked::default().feed(b"1\r\nab").is_err());
    }

    #[test]
    fn line_ends_are_crlf_only() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;x\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nTrailer: x\n\r\n",
            b"0\r\n\r\r",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(
                c.feed(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn decodes_what_it_followed() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nT: x\r\n\r\n";
        let mut c = Chunked::default();
        assert_eq!(c.feed(body).unwrap(), body.len());
        let mut out = Vec::new();
        decode(body, &mut out).unwrap();
        assert_eq!(out, b"hello world");
    }
}
