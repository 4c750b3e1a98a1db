//! Finds where a `Transfer-Encoding: chunked` body ends without decoding it: the HTTP/1.1 fast
//! path passes chunked bodies through verbatim (chunk sizes, extensions and trailers included)
//! and only needs to know which bytes still belong to the message.

/// Chunk sizes beyond this are refused (a length that cannot be real, or an overflow attempt).
const MAX_CHUNK: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size {
        n: u64,
        digits: u8,
    },
    /// Skipping a chunk extension (`;name=value`) or whitespace up to the line end.
    Ext {
        n: u64,
    },
    /// Saw `\r` after the size line, expecting `\n`.
    SizeLf {
        n: u64,
    },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting `\r\n`.
    DataCr,
    DataLf,
    /// In the trailer section, at the start of a line.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// Saw `\r` at the start of a trailer line: the final `\n` ends the body.
    EndLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

/// Tracks a chunked body's framing across reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size { n: 0, digits: 0 } }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `buf`, the next bytes of the body, and returns how many of them belong to it (all of
    /// them unless the body ends inside `buf`; what follows belongs to the next message).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() && !self.is_done() {
            i += self.step(&buf[i..])?.0;
        }
        Ok(i)
    }

    /// Advances over the start of `buf` up to the next boundary between chunk data and framing
    /// (sizes, extensions, line ends, trailers): returns how many bytes it took and whether they
    /// were data. Decoding a body is taking the data runs and skipping the rest.
    ///
    /// A framing run stops where the trailer section begins, so that a run that starts
    /// [`in_trailers`](Self::in_trailers) is trailer fields (and the final empty line) only.
    pub fn step(&mut self, buf: &[u8]) -> Result<(usize, bool), ChunkError> {
        if let State::Data(left) = self.state {
            let take = left.min(buf.len() as u64);
            self.state = if take == left { State::DataCr } else { State::Data(left - take) };
            return Ok((take as usize, true));
        }
        let trailers = self.in_trailers();
        let mut i = 0;
        while i < buf.len() && !matches!(self.state, State::Data(_) | State::Done) {
            self.state = next(self.state, buf[i])?;
            i += 1;
            if !trailers && self.state == State::TrailerStart {
                break;
            }
        }
        Ok((i, false))
    }

    /// True inside the trailer section (after the last chunk, before the final empty line).
    pub fn in_trailers(&self) -> bool {
        matches!(self.state, State::TrailerStart | State::TrailerLine | State::EndLf)
    }
}

/// The framing state after one more byte (outside chunk data).
fn next(state: State, b: u8) -> Result<State, ChunkError> {
    Ok(match state {
        State::Done | State::Data(_) => state,
        State::Size { n, digits } => match hex(b) {
            Some(d) => {
                let n = n * 16 + u64::from(d);
                if n > MAX_CHUNK {
                    return Err(ChunkError);
                }
                State::Size { n, digits: digits.saturating_add(1) }
            }
            None if digits == 0 => return Err(ChunkError),
            None => match b {
                b'\r' => State::SizeLf { n },
                b'\n' => size_line_done(n),
                b';' | b' ' | b'\t' => State::Ext { n },
                _ => return Err(ChunkError),
            },
        },
        State::Ext { n } => match b {
            b'\r' => State::SizeLf { n },
            b'\n' => size_line_done(n),
            _ => State::Ext { n },
        },
        State::SizeLf { n } => match b {
            b'\n' => size_line_done(n),
            _ => return Err(ChunkError),
        },
        State::DataCr => match b {
            b'\r' => State::DataLf,
            _ => return Err(ChunkError),
        },
        State::DataLf => match b {
            b'\n' => State::Size { n: 0, digits: 0 },
            _ => return Err(ChunkError),
        },
        State::TrailerStart => match b {
            b'\r' => State::EndLf,
            b'\n' => State::Done,
            _ => State::TrailerLine,
        },
        State::TrailerLine => match b {
            b'\n' => State::TrailerStart,
            _ => State::TrailerLine,
        },
        State::EndLf => match b {
            b'\n' => State::Done,
            _ => return Err(ChunkError),
        },
    })
}

fn size_line_done(n: u64) -> State {
    if n == 0 {
        State::TrailerStart
    } else {
        State::Data(n)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, ChunkError> {
        let mut c = Chunked::default();
        let n = c.feed(body)?;
        assert!(c.is_done(), "not done after {n}");
        Ok(n)
    }

    #[test]
    fn ends_where_the_body_ends() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(whole(body), Ok(body.len() - 16));
        let trailers = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\nnext";
        assert_eq!(whole(trailers), Ok(trailers.len() - 4));
    }

    /// Feeds `body` in pieces of `piece` bytes: bytes taken, done, and whether it failed.
    fn fed_in_pieces(body: &[u8], piece: usize) -> (usize, bool, bool) {
        let mut c = Chunked::default();
        let mut taken = 0;
        for part in body.chunks(piece) {
            match c.feed(part) {
                Ok(n) => {
                    assert!(n <= part.len());
                    taken += n;
                    if c.is_done() {
                        break;
                    }
                }
                Err(ChunkError) => return (taken, false, true),
            }
        }
        (taken, c.is_done(), false)
    }

    #[test]
    fn random_bodies_end_alike_however_they_arrive() {
        let body = b"10\r\n0123456789abcdef\r\n2;x=y\r\nxy\r\n0\r\nT: v\r\nU: w\r\n\r\nGET / HTTP/1.1\r\n";
        crate::testutil::mutations(body, 20_000, |b| {
            let whole = fed_in_pieces(b, b.len().max(1));
            for piece in [1, 3, 7] {
                let (taken, done, failed) = fed_in_pieces(b, piece);
                assert_eq!(done, whole.1, "piece {piece}: {b:?}");
                assert_eq!(failed, whole.2, "piece {piece}: {b:?}");
                if done {
                    assert_eq!(taken, whole.0, "piece {piece}: {b:?}");
                }
            }
        });
    }

    #[test]
    fn any_split_gives_the_same_end() {
        let body = b"10\r\n0123456789abcdef\r\n2\r\nxy\r\n0\r\nT: v\r\n\r\nrest";
        for split in 0..body.len() {
            let mut c = Chunked::default();
            let end = body.len() - 4;
            let a = c.feed(&body[..split]).unwrap();
            assert_eq!(a, split.min(end));
            let b = if a < split { 0 } else { c.feed(&body[split..]).unwrap() };
            assert!(c.is_done());
            assert_eq!(a + b, end, "split at {split}");
        }
    }

    #[test]
    fn steps_separate_data_from_framing() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n";
        let mut c = Chunked::default();
        let (mut i, mut data) = (0, Vec::new());
        while !c.is_done() {
            let (k, is_data) = c.step(&body[i..]).unwrap();
            if is_data {
                data.extend_from_slice(&body[i..i + k]);
            }
            i += k;
        }
        assert_eq!(data, b"hello world");
        assert_eq!(i, body.len());
    }

    #[test]
    fn trailer_section_is_a_run_of_its_own() {
        for body in [&b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n"[..], b"0\r\nX-Sum: 1\r\nY: 2\r\n\r\n"] {
            // Any split of the input: the trailer bytes are exactly the runs that start in them.
            for split in 0..body.len() {
                let mut c = Chunked::default();
                let (mut i, mut trailers) = (0, Vec::new());
                while !c.is_done() {
                    let end = if i < split { split } else { body.len() };
                    let was = c.in_trailers();
                    let (k, _) = c.step(&body[i..end]).unwrap();
                    if was {
                        trailers.extend_from_slice(&body[i..i + k]);
                    }
                    i += k;
                }
                assert_eq!(trailers, b"X-Sum: 1\r\nY: 2\r\n\r\n", "split at {split}");
            }
        }
        let mut c = Chunked::default();
        c.feed(b"0\r\n\r\n").unwrap();
        assert!(c.is_done() && !c.in_trailers());
    }

    #[test]
    fn refuses_bad_framing() {
        assert_eq!(Chunked::default().feed(b"zz\r\n"), Err(ChunkError));
        assert_eq!(Chunked::default().feed(b"\r\n"), Err(ChunkError));
        assert_eq!(Chunked::default().feed(b"3\r\nabcX"), Err(ChunkError));
        assert_eq!(Chunked::default().feed(b"fffffffffffffffffff\r\n"), Err(ChunkError));
    }
}
