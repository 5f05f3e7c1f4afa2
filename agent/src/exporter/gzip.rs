//! gzip of export bodies, straight from the batch's segments into one right-sized buffer.
//!
//! Memory is the point: a request in flight holds its batch (kept for a retry) and the
//! compressed body, nothing else. tonic's own gzip path held three more buffers of the full
//! uncompressed size per request (the merged batch, an uncompressed copy and an output buffer
//! reserved at the uncompressed size), about 2 MiB per request in flight at the default batch
//! size. The deflate state (~300 KiB) is kept and reused instead of allocated per request.

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use std::io;
use std::sync::Mutex;

/// gzip member header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// Smallest spare room handed to the compressor.
const MIN_SPARE: usize = 4096;

/// One deflate state reused by successive requests (a concurrent request on another thread
/// builds its own, dropped afterwards). Allocated on first use: an idle agent has none.
pub struct Gzip {
    level: Compression,
    state: Mutex<Option<Compress>>,
}

impl Gzip {
    pub fn new(level: Compression) -> Gzip {
        Gzip { level, state: Mutex::new(None) }
    }

    /// `prefix` zero bytes (for the caller's framing), then the gzip of the concatenated segments.
    pub fn compress(&self, segments: &[Bytes], prefix: usize) -> io::Result<Vec<u8>> {
        let taken = self.state.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut deflate = taken.unwrap_or_else(|| Compress::new(self.level, false));
        deflate.reset();
        let result = gzip(&mut deflate, segments, prefix);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(deflate);
        result
    }
}

fn gzip(deflate: &mut Compress, segments: &[Bytes], prefix: usize) -> io::Result<Vec<u8>> {
    let total: usize = segments.iter().map(|s| s.len()).sum();
    // Telemetry protobuf compresses several times; the buffer grows if this guess is short.
    let mut out = Vec::with_capacity(prefix + HEADER.len() + total / 4 + MIN_SPARE);
    out.resize(prefix, 0);
    out.extend_from_slice(&HEADER);
    let mut crc = Crc::new();
    for segment in segments {
        crc.update(segment);
        let mut input = &segment[..];
        while !input.is_empty() {
            reserve(&mut out);
            let before = deflate.total_in();
            deflate.compress_vec(input, &mut out, FlushCompress::None).map_err(io::Error::other)?;
            input = &input[(deflate.total_in() - before) as usize..];
        }
    }
    loop {
        reserve(&mut out);
        if deflate.compress_vec(&[], &mut out, FlushCompress::Finish).map_err(io::Error::other)? == Status::StreamEnd {
            break;
        }
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    // Held until the collector has it: do not keep a growth step's slack for that long.
    if out.capacity() - out.len() > out.len() / 8 + MIN_SPARE {
        out.shrink_to_fit();
    }
    Ok(out)
}

fn reserve(out: &mut Vec<u8>) {
    let spare = out.capacity() - out.len();
    if spare < MIN_SPARE {
        out.reserve((out.len() / 2).max(MIN_SPARE));
    }
}

/// [`Gzip::compress`] of one body into `Bytes`.
pub fn body(gzip: &Gzip, segments: &[Bytes]) -> io::Result<Bytes> {
    gzip.compress(segments, 0).map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data).read_to_end(&mut out).expect("valid gzip");
        out
    }

    #[test]
    fn segments_round_trip_and_the_state_is_reused() {
        let gz = Gzip::new(Compression::new(6));
        let a = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let b = Bytes::from_static(b"tail");
        let out = gz.compress(&[a.clone(), b.clone()], 5).expect("gzip");
        assert_eq!(&out[..5], &[0; 5]);
        assert_eq!(gunzip(&out[5..]), [&a[..], &b[..]].concat());
        // Second use of the kept state: a fresh stream, not a continuation.
        let again = body(&gz, std::slice::from_ref(&b)).expect("gzip");
        assert_eq!(gunzip(&again), b"tail");
        let empty = body(&gz, &[]).expect("gzip");
        assert!(gunzip(&empty).is_empty());
    }

    #[test]
    fn incompressible_input_grows_the_buffer() {
        let mut rng = fastrand::Rng::with_seed(7);
        let noise = Bytes::from((0..300_000).map(|_| rng.u8(..)).collect::<Vec<_>>());
        let out = body(&Gzip::new(Compression::fast()), std::slice::from_ref(&noise)).expect("gzip");
        assert_eq!(gunzip(&out), &noise[..]);
    }
}
