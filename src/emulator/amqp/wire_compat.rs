//! A write-side shim that re-encodes every performative the endpoint sends as a full-length
//! list.
//!
//! fe2o3-amqp (serde_amqp's derive) leaves out trailing null fields of described lists and
//! writes fields equal to their default as null, both of which AMQP 1.0 allows. The Event
//! Hubs client's pure-Python AMQP stack (pyamqp, azure-eventhub 5.x) does not: it reads
//! performative fields by position (`frame[4]` of Open, `frame[7]` of Begin, `frame[13]` of
//! Attach) and takes a Transfer's payload as `frame[11]`, so a shortened list fails on the
//! first Open frame. Azure (Microsoft.Azure.Amqp) always writes every field, so padding with
//! nulls (0x40) to each performative's arity is what the clients were built against.
//!
//! Frames are re-parsed from the bytes fe2o3 writes (protocol headers pass through), each
//! performative list is padded and the frame size fixed up; the read side is untouched.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Unsent output past which a write waits for the socket (fe2o3 flushes after each frame, so
/// this is only reached with a peer that stopped reading).
const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// The stream fe2o3 runs over: reads pass through, written performatives are padded.
pub(crate) struct PadPerformatives<S> {
    inner: S,
    /// Bytes fe2o3 wrote that do not form a whole frame yet.
    input: Vec<u8>,
    /// Padded bytes not yet written to `inner`.
    output: Vec<u8>,
}

impl<S> fmt::Debug for PadPerformatives<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PadPerformatives")
    }
}

impl<S> PadPerformatives<S> {
    /// Wraps the (TLS) stream of one connection.
    pub(crate) fn new(inner: S) -> Self {
        PadPerformatives {
            inner,
            input: Vec::new(),
            output: Vec::new(),
        }
    }
}

/// The number of fields of each performative (AMQP 1.0 parts 2 and 5), by descriptor code.
fn arity(code: u64) -> Option<usize> {
    Some(match code {
        0x10 => 10, // open
        0x11 => 8,  // begin
        0x12 => 14, // attach
        0x13 => 11, // flow
        0x14 => 11, // transfer
        0x15 => 6,  // disposition
        0x16 => 3,  // detach
        0x17 => 1,  // end
        0x18 => 1,  // close
        0x40 => 1,  // sasl-mechanisms
        0x42 => 1,  // sasl-challenge
        0x44 => 2,  // sasl-outcome
        _ => return None,
    })
}

fn be_u32(bytes: Option<&[u8]>) -> Option<usize> {
    let bytes: [u8; 4] = bytes?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(bytes)).ok()
}

/// The frame re-encoded with its performative at full arity, or `None` to keep it as it is
/// (already full, an empty heartbeat frame, or not a performative this shim knows).
fn pad_frame(frame: &[u8]) -> Option<Vec<u8>> {
    let doff = usize::from(*frame.get(4)?) * 4;
    let body = frame.get(doff..)?;
    if body.first() != Some(&0x00) {
        return None;
    }
    let (code, mut i) = match *body.get(1)? {
        0x53 => (u64::from(*body.get(2)?), 3),
        0x80 => (u64::from_be_bytes(body.get(2..10)?.try_into().ok()?), 10),
        _ => return None,
    };
    let want = arity(code)?;
    let constructor = *body.get(i)?;
    i += 1;
    let (count, fields_start, fields_end) = match constructor {
        0x45 => (0usize, i, i),
        0xc0 => {
            let size = usize::from(*body.get(i)?);
            (usize::from(*body.get(i + 1)?), i + 2, i + 1 + size)
        }
        0xd0 => {
            let size = be_u32(body.get(i..i + 4))?;
            (be_u32(body.get(i + 4..i + 8))?, i + 8, i + 4 + size)
        }
        _ => return None,
    };
    if count >= want {
        return None;
    }
    let mut fields = body.get(fields_start..fields_end)?.to_vec();
    fields.extend(std::iter::repeat_n(0x40u8, want - count));
    let mut padded = body.get(..i - 1)?.to_vec();
    match u8::try_from(fields.len() + 1) {
        Ok(size) => {
            padded.push(0xc0);
            padded.push(size);
            padded.push(u8::try_from(want).ok()?);
        }
        Err(_) => {
            padded.push(0xd0);
            padded.extend(u32::try_from(fields.len() + 4).ok()?.to_be_bytes());
            padded.extend(u32::try_from(want).ok()?.to_be_bytes());
        }
    }
    padded.extend(fields);
    // A transfer's payload follows its performative.
    padded.extend(body.get(fields_end..)?);
    let mut out = frame.get(..doff)?.to_vec();
    out.extend(padded);
    let size = u32::try_from(out.len()).ok()?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

impl<S> PadPerformatives<S> {
    /// Moves every whole frame (or protocol header) of `input` to `output`, padded.
    fn process_input(&mut self) {
        loop {
            if self.input.starts_with(b"AMQP") {
                if self.input.len() < 8 {
                    return;
                }
                self.output.extend(self.input.drain(..8));
                continue;
            }
            let Some(size) = be_u32(self.input.get(..4)) else {
                return;
            };
            if size < 8 {
                // Not a frame fe2o3 would write: pass everything on rather than loop.
                self.output.append(&mut self.input);
                return;
            }
            if self.input.len() < size {
                return;
            }
            let frame: Vec<u8> = self.input.drain(..size).collect();
            match pad_frame(&frame) {
                Some(padded) => self.output.extend(padded),
                None => self.output.extend(frame),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PadPerformatives<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> PadPerformatives<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.output.is_empty() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.output) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.output.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PadPerformatives<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.output.len() > MAX_PENDING_OUTPUT {
            match this.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        this.input.extend_from_slice(buf);
        this.process_input();
        // Whatever the socket takes now; flush writes the rest.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A frame (channel 0, AMQP type) around `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut frame = vec![0, 0, 0, 0, 2, 0, 0, 0];
        frame.extend(body);
        let size = u32::try_from(frame.len()).unwrap();
        frame[..4].copy_from_slice(&size.to_be_bytes());
        frame
    }

    #[test]
    fn a_short_open_is_padded_to_its_ten_fields() {
        // open with only container-id "a".
        let out = pad_frame(&frame(&[
            0x00, 0x53, 0x10, 0xc0, 0x04, 0x01, 0xa1, 0x01, b'a',
        ]))
        .unwrap();
        assert_eq!(&out[8..14], &[0x00, 0x53, 0x10, 0xc0, 4 + 9, 10]);
        assert_eq!(&out[14..17], &[0xa1, 0x01, b'a']);
        assert!(out[17..].iter().all(|&b| b == 0x40));
        assert_eq!(out.len(), 8 + 6 + 3 + 9);
        assert_eq!(
            u32::from_be_bytes(out[..4].try_into().unwrap()) as usize,
            out.len()
        );
    }

    #[test]
    fn a_transfer_keeps_its_payload_after_the_padded_fields() {
        // transfer(handle 0) as list32, then a payload of three bytes.
        let mut body = vec![0x00, 0x53, 0x14, 0xd0, 0, 0, 0, 5, 0, 0, 0, 1, 0x43];
        body.extend(b"xyz");
        let out = pad_frame(&frame(&body)).unwrap();
        // 1 field + 10 nulls fit a list8: size = 11 fields + count byte.
        assert_eq!(&out[8..14], &[0x00, 0x53, 0x14, 0xc0, 12, 11]);
        assert_eq!(out[14], 0x43);
        assert!(out[15..25].iter().all(|&b| b == 0x40));
        assert_eq!(&out[25..], b"xyz");
    }

    #[test]
    fn an_empty_list_and_a_long_descriptor_are_padded_and_full_lists_kept() {
        // end with list0.
        let out = pad_frame(&frame(&[0x00, 0x53, 0x17, 0x45])).unwrap();
        assert_eq!(&out[8..], &[0x00, 0x53, 0x17, 0xc0, 2, 1, 0x40]);
        // close with its ulong descriptor.
        let mut close = vec![0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x18, 0x45];
        let out = pad_frame(&frame(&close)).unwrap();
        assert_eq!(&out[8 + 10..], &[0xc0, 2, 1, 0x40]);
        // A full detach (3 fields), a heartbeat and an unknown descriptor stay as they are.
        assert!(pad_frame(&frame(&[0x00, 0x53, 0x16, 0xc0, 4, 3, 0x43, 0x41, 0x40])).is_none());
        assert!(pad_frame(&frame(&[])).is_none());
        close[9] = 0x77;
        assert!(pad_frame(&frame(&close)).is_none());
        // Truncated input is left alone, never read past.
        assert!(pad_frame(&[0, 0, 0, 12, 2, 0, 0, 0, 0x00, 0x53, 0x10, 0xc0]).is_none());
    }

    #[tokio::test]
    async fn headers_pass_through_and_frames_split_across_writes_are_padded_once_whole() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut padded = PadPerformatives::new(client);
        let end = frame(&[0x00, 0x53, 0x17, 0x45]);
        let mut written = b"AMQP\x00\x01\x00\x00".to_vec();
        written.extend(&end);
        let (first, second) = written.split_at(10);
        padded.write_all(first).await.unwrap();
        padded.write_all(second).await.unwrap();
        padded.flush().await.unwrap();
        drop(padded);
        let mut read = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut read)
            .await
            .unwrap();
        assert_eq!(&read[..8], b"AMQP\x00\x01\x00\x00");
        assert_eq!(&read[8..], &pad_frame(&end).unwrap()[..]);
    }
}
