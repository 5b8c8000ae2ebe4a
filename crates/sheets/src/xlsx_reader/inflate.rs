//! A part's bytes as a stream of chunks: inflated on the caller's thread for small parts, or
//! on a thread of its own for large ones so inflating and scanning run side by side (the
//! scan is the slower of the two; the inflater stays a few chunks ahead, no further). The
//! inflated size and CRC-32 are checked against the zip directory at the end.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

use flate2::{Decompress, FlushDecompress, Status};

use super::Bail;
use super::package::{Entry, Method};

/// Bytes handed over at a time.
pub const CHUNK: usize = 256 * 1024;
/// Chunks the inflater may run ahead of the scan.
const AHEAD: usize = 4;

/// Inflates one zip entry out of the file image.
pub struct Inflater {
    image: Arc<[u8]>,
    /// Next compressed byte, and the end of the entry's data.
    pos: usize,
    end: usize,
    z: Option<Decompress>,
    produced: u64,
    size: u64,
    crc: crc32fast::Hasher,
    crc32: u32,
    done: bool,
}

impl Inflater {
    fn new(image: Arc<[u8]>, e: &Entry) -> Self {
        Self {
            image,
            pos: e.data_start,
            end: e.data_start + e.compressed,
            z: (e.method == Method::Deflated).then(|| Decompress::new(false)),
            produced: 0,
            size: e.size,
            crc: crc32fast::Hasher::new(),
            crc32: e.crc32,
            done: false,
        }
    }

    /// Append up to about `CHUNK` bytes to `out`; 0 at the end (after checking size and CRC).
    fn fill(&mut self, out: &mut Vec<u8>) -> Result<usize, Bail> {
        if self.done {
            return Ok(0);
        }
        let before = out.len();
        match &mut self.z {
            None => {
                let n = (self.end - self.pos).min(CHUNK);
                out.extend_from_slice(&self.image[self.pos..self.pos + n]);
                self.pos += n;
            }
            Some(z) => {
                // Exactly CHUNK bytes of room: inflating into a Vec fills all its spare capacity,
                // so a recycled buffer would otherwise grow with every use.
                out.resize(before + CHUNK, 0);
                let mut filled = before;
                while filled - before < CHUNK / 2 {
                    let (in_before, out_before) = (z.total_in(), z.total_out());
                    let input = &self.image[self.pos..self.end];
                    let status = z
                        .decompress(input, &mut out[filled..], FlushDecompress::None)
                        .map_err(|e| Bail::new(format!("inflate: {e}")))?;
                    let (took, gave) = (z.total_in() - in_before, z.total_out() - out_before);
                    self.pos += took as usize;
                    filled += gave as usize;
                    match status {
                        Status::StreamEnd => break,
                        Status::Ok => {}
                        Status::BufError => {
                            if self.pos >= self.end || (took == 0 && gave == 0 && filled < out.len()) {
                                out.truncate(filled);
                                return Err(Bail::new("compressed data ends early"));
                            }
                        }
                    }
                    if filled == out.len() {
                        break;
                    }
                }
                out.truncate(filled);
            }
        }
        let n = out.len() - before;
        self.produced += n as u64;
        if self.produced > self.size {
            return Err(Bail::new("part inflates past its declared size"));
        }
        self.crc.update(&out[before..]);
        if n == 0 {
            self.done = true;
            if self.produced != self.size || self.crc.clone().finalize() != self.crc32 {
                return Err(Bail::new("part size or checksum differs from the zip directory"));
            }
        }
        Ok(n)
    }
}

/// Where the scan gets its bytes.
pub enum Source {
    Inline(Box<Inflater>),
    Threaded { chunks: Receiver<Result<Vec<u8>, Bail>>, spare: SyncSender<Vec<u8>>, ended: bool },
}

impl Source {
    pub fn new(image: Arc<[u8]>, e: &Entry, threaded: bool) -> Result<Self, Bail> {
        let mut inf = Box::new(Inflater::new(image, e));
        if !threaded {
            return Ok(Source::Inline(inf));
        }
        let (tx, chunks) = sync_channel::<Result<Vec<u8>, Bail>>(AHEAD);
        let (spare, spare_rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = sync_channel(AHEAD + 2);
        let spawned = std::thread::Builder::new().name("gemba-inflate".into()).spawn(move || {
            loop {
                let mut buf = match spare_rx.try_recv() {
                    Ok(b) => b,
                    Err(TryRecvError::Empty) => Vec::with_capacity(CHUNK + CHUNK / 2),
                    // The scan is gone: stop.
                    Err(TryRecvError::Disconnected) => return,
                };
                buf.clear();
                match inf.fill(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(Ok(Vec::new()));
                        return;
                    }
                    Ok(_) => {
                        if tx.send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(b) => {
                        let _ = tx.send(Err(b));
                        return;
                    }
                }
            }
        });
        match spawned {
            Ok(_) => Ok(Source::Threaded { chunks, spare, ended: false }),
            Err(e) => Err(Bail::new(format!("cannot start the inflate thread: {e}"))),
        }
    }

    /// Append the next chunk to `out`; 0 at the end of the part.
    pub fn fill(&mut self, out: &mut Vec<u8>) -> Result<usize, Bail> {
        match self {
            Source::Inline(inf) => inf.fill(out),
            Source::Threaded { chunks, spare, ended } => {
                if *ended {
                    return Ok(0);
                }
                match chunks.recv() {
                    Ok(Ok(chunk)) => {
                        if chunk.is_empty() {
                            *ended = true;
                            return Ok(0);
                        }
                        out.extend_from_slice(&chunk);
                        let n = chunk.len();
                        let _ = spare.try_send(chunk);
                        Ok(n)
                    }
                    Ok(Err(b)) => {
                        *ended = true;
                        Err(b)
                    }
                    Err(_) => Err(Bail::new("the inflate thread stopped")),
                }
            }
        }
    }
}
