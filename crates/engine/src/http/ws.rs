//! A frame-aware WebSocket relay, used when a route sets `pingInterval`, `pingTimeout` or
//! `maxPayloadSize` (otherwise upgraded connections are relayed as plain bytes).
//!
//! - Keep-alive: every `pingInterval` the proxy sends a ping to the client, between two frames of
//!   the backend's stream; a client that does not answer within `pingTimeout` (default: the
//!   interval) is disconnected. Pongs answering the proxy's own pings (recognised by their
//!   payload) are not forwarded to the backend.
//! - `maxPayloadSize`: a client message (all its fragments) larger than this closes the
//!   connection with status 1009 to the client and 1001 to the backend.
//!
//! Frames are scanned as they stream (RFC 6455 §5.2); payloads pass through without copies
//! beyond the read buffer, except control frames (≤ 125 bytes), which are held until whole.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Options of the frame-aware relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsLimits {
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Option<Duration>,
    pub max_payload: Option<u64>,
}

/// Prefix of the proxy's own ping payloads.
const PING_TAG: &[u8; 4] = b"spn!";
const OP_CONT: u8 = 0x0;
const OP_CLOSE: u8 = 0x8;
const OP_PONG: u8 = 0xA;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Forward these bytes.
    Forward,
    /// A pong to one of our pings: swallow it.
    OurPong,
    /// The message grew past the limit.
    TooBig,
}

/// Incremental frame scanner over one direction's byte stream.
#[derive(Default)]
pub(crate) struct Scanner {
    header: Vec<u8>,
    /// Remaining payload bytes of the current data frame (streamed through).
    remaining: u64,
    /// A control frame being collected whole (header + payload) before a verdict.
    control: Option<(Vec<u8>, usize)>,
    message_size: u64,
    /// Whether the stream is between frames (pings may be injected here).
    at_boundary: bool,
}

fn header_len(h: &[u8]) -> Option<usize> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let base = match h[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some(base + if masked { 4 } else { 0 })
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    }
}

impl Scanner {
    pub(crate) fn new() -> Self {
        Scanner { at_boundary: true, ..Default::default() }
    }

    /// Splits `data` into pieces, calling `out(bytes, verdict, at_boundary_after)` for each.
    pub(crate) fn feed(
        &mut self,
        mut data: &[u8],
        max_payload: Option<u64>,
        mut out: impl FnMut(&[u8], Verdict, bool),
    ) {
        while !data.is_empty() {
            if let Some((buf, need)) = &mut self.control {
                let take = (*need - buf.len()).min(data.len());
                buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if buf.len() == *need {
                    let (frame, _) = self.control.take().unwrap_or_default();
                    self.at_boundary = true;
                    out(&frame, classify_control(&frame), true);
                }
                continue;
            }
            if self.remaining > 0 {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= take as u64;
                self.at_boundary = self.remaining == 0;
                out(&data[..take], Verdict::Forward, self.at_boundary);
                data = &data[take..];
                continue;
            }
            // Collecting a header.
            self.at_boundary = false;
            self.header.push(data[0]);
            data = &data[1..];
            let Some(hl) = header_len(&self.header) else { continue };
            if self.header.len() < hl {
                continue;
            }
            let h = std::mem::take(&mut self.header);
            let opcode = h[0] & 0x0f;
            let fin = h[0] & 0x80 != 0;
            let len = payload_len(&h);
            if opcode & 0x8 != 0 {
                // Control frame: at most 125 bytes; hold it whole.
                let need = hl + len.min(125) as usize;
                if need == hl {
                    self.at_boundary = true;
                    out(&h, classify_control(&h), true);
                } else {
                    self.control = Some((h, need));
                }
                continue;
            }
            if opcode != OP_CONT {
                self.message_size = 0;
            }
            // Saturating: a peer may claim lengths up to 2^64 - 1 in several fragments.
            self.message_size = self.message_size.saturating_add(len);
            if max_payload.is_some_and(|m| self.message_size > m) {
                out(&h, Verdict::TooBig, false);
                return;
            }
            if fin {
                self.message_size = 0;
            }
            self.remaining = len;
            self.at_boundary = len == 0;
            out(&h, Verdict::Forward, self.at_boundary);
        }
    }
}

fn classify_control(frame: &[u8]) -> Verdict {
    if frame[0] & 0x0f != OP_PONG {
        return Verdict::Forward;
    }
    let hl = header_len(frame).unwrap_or(frame.len());
    let mut payload = frame[hl..].to_vec();
    if frame[1] & 0x80 != 0 {
        let mask = &frame[hl - 4..hl];
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    if payload.starts_with(PING_TAG) {
        Verdict::OurPong
    } else {
        Verdict::Forward
    }
}

/// A server→client frame (unmasked) with a small payload.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

/// A client→server frame (masked, as RFC 6455 requires of clients) with a small payload.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0xa5, 0x3c, 0xc3];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn ping_frame(counter: u64) -> Vec<u8> {
    let mut payload = PING_TAG.to_vec();
    payload.extend_from_slice(&counter.to_be_bytes());
    frame(0x9, &payload)
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// Relays between the upgraded client and backend streams until either side ends.
pub async fn relay<C, B>(client: C, backend: B, limits: WsLimits)
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);
    let mut up = Scanner::new(); // client → backend
    let mut down = Scanner::new(); // backend → client
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    let interval = limits.ping_interval.filter(|d| !d.is_zero());
    let timeout = limits.ping_timeout.filter(|d| !d.is_zero()).or(interval);
    let mut next_ping = interval.map(|d| Instant::now() + d);
    let mut pong_deadline: Option<Instant> = None;
    let mut ping_due = false;
    let mut counter: u64 = 0;
    loop {
        let wake = match (next_ping, pong_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                let mut forward: Vec<u8> = Vec::with_capacity(n);
                let (mut our_pong, mut too_big) = (false, false);
                up.feed(&cbuf[..n], limits.max_payload, |b, v, _| match v {
                    Verdict::Forward => forward.extend_from_slice(b),
                    Verdict::OurPong => our_pong = true,
                    Verdict::TooBig => too_big = true,
                });
                if !forward.is_empty() && bw.write_all(&forward).await.is_err() {
                    return;
                }
                if our_pong {
                    pong_deadline = None;
                }
                if too_big {
                    let _ = cw.write_all(&frame(OP_CLOSE, &close_payload(1009, "message too big"))).await;
                    let _ = bw.write_all(&masked_frame(OP_CLOSE, &close_payload(1001, "going away"))).await;
                    return;
                }
            }
            r = br.read(&mut bbuf) => {
                let n = match r { Ok(0) | Err(_) => break, Ok(n) => n };
                // Boundaries inside this chunk, so that a due ping goes out between frames.
                let mut cuts: Vec<usize> = Vec::new();
                let mut pos = 0;
                down.feed(&bbuf[..n], None, |b, _, boundary| {
                    pos += b.len();
                    if boundary {
                        cuts.push(pos);
                    }
                });
                let mut from = 0;
                for cut in cuts {
                    if !ping_due {
                        break;
                    }
                    if cw.write_all(&bbuf[from..cut]).await.is_err() { return }
                    from = cut;
                    counter += 1;
                    if cw.write_all(&ping_frame(counter)).await.is_err() { return }
                    ping_due = false;
                }
                if cw.write_all(&bbuf[from..n]).await.is_err() { return }
            }
            _ = crate::timer::sleep_until_opt(wake) => {
                let now = Instant::now();
                if pong_deadline.is_some_and(|d| d <= now) {
                    // No pong in time: the client is gone.
                    return;
                }
                if next_ping.is_some_and(|t| t <= now) {
                    next_ping = interval.map(|d| now + d);
                    if pong_deadline.is_none() {
                        pong_deadline = timeout.map(|d| now + d);
                    }
                    if down.at_boundary {
                        counter += 1;
                        if cw.write_all(&ping_frame(counter)).await.is_err() { return }
                    } else {
                        ping_due = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(s: &mut Scanner, data: &[u8], max: Option<u64>) -> Vec<(Vec<u8>, Verdict)> {
        let mut v = Vec::new();
        s.feed(data, max, |b, x, _| v.push((b.to_vec(), x)));
        v
    }

    #[test]
    fn scanner_splits_frames_and_spots_our_pongs() {
        let mut data = masked_frame(0x1, b"hello");
        let mut ours = PING_TAG.to_vec();
        ours.extend_from_slice(&7u64.to_be_bytes());
        data.extend(masked_frame(OP_PONG, &ours));
        data.extend(masked_frame(OP_PONG, b"theirs"));
        // Byte by byte: verdicts and boundaries must not depend on chunking.
        let mut s = Scanner::new();
        let mut got = Vec::new();
        for b in &data {
            got.extend(scan(&mut s, std::slice::from_ref(b), None));
        }
        let forwarded: Vec<u8> =
            got.iter().filter(|(_, v)| *v == Verdict::Forward).flat_map(|(b, _)| b.clone()).collect();
        let mut expect = masked_frame(0x1, b"hello");
        expect.extend(masked_frame(OP_PONG, b"theirs"));
        assert_eq!(forwarded, expect);
        assert_eq!(got.iter().filter(|(_, v)| *v == Verdict::OurPong).count(), 1);
        assert!(s.at_boundary);
    }

    /// Feeds `data` in pieces of `piece` bytes: the bytes emitted (in order) and every verdict
    /// with the number of bytes emitted before it, up to and including a `TooBig`.
    fn scan_in_pieces(data: &[u8], piece: usize, max: Option<u64>) -> (Vec<u8>, Vec<(usize, Verdict)>) {
        let mut s = Scanner::new();
        let (mut bytes, mut verdicts) = (Vec::new(), Vec::new());
        for part in data.chunks(piece) {
            let mut stop = false;
            s.feed(part, max, |b, v, _| {
                stop |= v == Verdict::TooBig;
                if v != Verdict::Forward {
                    verdicts.push((bytes.len(), v));
                }
                bytes.extend_from_slice(b);
            });
            if stop {
                break;
            }
        }
        (bytes, verdicts)
    }

    #[test]
    fn random_streams_scan_alike_however_they_arrive() {
        let mut ours = PING_TAG.to_vec();
        ours.extend_from_slice(&3u64.to_be_bytes());
        let mut data = masked_frame(0x1, b"hello");
        data.extend(masked_frame(OP_PONG, &ours));
        data.extend([0x02, 0xfe, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8, 9]); // 16-bit length, unmasked
        data.extend(masked_frame(0x9, b"ping"));
        data.extend(masked_frame(OP_CONT, b"tail"));
        data.extend(masked_frame(OP_CLOSE, &close_payload(1000, "bye")));
        crate::testutil::mutations(&data, 20_000, |d| {
            for max in [None, Some(8)] {
                let (whole, verdicts) = scan_in_pieces(d, d.len().max(1), max);
                assert!(d.starts_with(&whole), "emitted bytes that were not sent");
                for piece in [1, 2, 5] {
                    let (bytes, v) = scan_in_pieces(d, piece, max);
                    assert_eq!(bytes, whole, "piece {piece}: {d:?}");
                    assert_eq!(v, verdicts, "piece {piece}: {d:?}");
                }
            }
        });
    }

    #[test]
    fn fragment_sizes_saturate() {
        // Two fragments whose claimed lengths add up past 2^64.
        let huge = [0x01, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let mut s = Scanner::new();
        s.feed(&huge, None, |_, _, _| {});
        s.remaining = 0;
        s.feed(&[0x80, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], Some(u64::MAX - 1), |_, v, _| {
            assert_eq!(v, Verdict::TooBig)
        });
    }

    #[test]
    fn max_payload_counts_fragments() {
        let mut s = Scanner::new();
        // First fragment (FIN=0, text) of 60 bytes, then a continuation of 60 bytes: 120 > 100.
        let mut f1 = vec![0x01, 60];
        f1.extend([0u8; 60]);
        let mut f2 = vec![0x80, 60];
        f2.extend([0u8; 60]);
        assert!(scan(&mut s, &f1, Some(100)).iter().all(|(_, v)| *v == Verdict::Forward));
        assert!(scan(&mut s, &f2, Some(100)).iter().any(|(_, v)| *v == Verdict::TooBig));
        // 16-bit length.
        let mut s = Scanner::new();
        let mut big = vec![0x82, 126, 0x01, 0x00];
        big.extend(vec![0u8; 256]);
        assert!(scan(&mut s, &big, Some(200)).iter().any(|(_, v)| *v == Verdict::TooBig));
        let mut s = Scanner::new();
        assert!(scan(&mut s, &big, Some(300)).iter().all(|(_, v)| *v == Verdict::Forward));
    }
}
