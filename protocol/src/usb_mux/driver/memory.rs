//! Bulk endpoints in memory, behaving as USB does where it matters to the mux: a write is a
//! train of `max_packet_size` packets; the reading side's transfer ends at a short packet
//! (a zero-length one included) or when its buffer is full. So a write whose length is a
//! multiple of the packet size, sent without a zero-length packet after it, merges with
//! the next one, exactly as on a real bus (docs/protocol.md §2.4). Writes wait when the
//! other side does not read (a few transfers are queued), as a bulk endpoint NAKs.

use std::io;

use tokio::sync::mpsc;

use super::{BulkIn, BulkOut};

/// Transfers queued between the two sides before a writer waits.
const QUEUED_TRANSFERS: usize = 4;

/// The reading end of one direction.
#[derive(Debug)]
pub struct MemoryIn {
    rx: mpsc::Receiver<Vec<u8>>,
    /// The part of a write that did not fit the previous transfer buffer.
    leftover: Vec<u8>,
    max_packet_size: usize,
    transfer_size: usize,
}

/// The writing end of one direction; clones write into the same direction (tests use one
/// to inject raw bytes).
#[derive(Debug, Clone)]
pub struct MemoryOut {
    tx: mpsc::Sender<Vec<u8>>,
    max_packet_size: usize,
}

/// One side's endpoints: what it reads and what it writes.
#[derive(Debug)]
pub struct MemoryEnd {
    pub bulk_in: MemoryIn,
    pub bulk_out: MemoryOut,
}

/// Two connected sides (host, device). `transfer_size` should be a multiple of
/// `max_packet_size`, as USB buffers are.
pub fn pipe(max_packet_size: usize, transfer_size: usize) -> (MemoryEnd, MemoryEnd) {
    let max_packet_size = max_packet_size.max(1);
    let transfer_size = transfer_size.max(max_packet_size);
    let (to_device, from_host) = mpsc::channel(QUEUED_TRANSFERS);
    let (to_host, from_device) = mpsc::channel(QUEUED_TRANSFERS);
    let end = |rx, tx| MemoryEnd {
        bulk_in: MemoryIn {
            rx,
            leftover: Vec::new(),
            max_packet_size,
            transfer_size,
        },
        bulk_out: MemoryOut {
            tx,
            max_packet_size,
        },
    };
    (end(from_device, to_device), end(from_host, to_host))
}

impl BulkIn for MemoryIn {
    async fn read_transfer(&mut self) -> io::Result<Vec<u8>> {
        let mut transfer = Vec::new();
        loop {
            let write = if self.leftover.is_empty() {
                match self.rx.recv().await {
                    Some(write) => write,
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the other end of the memory pipe is gone",
                        ))
                    }
                }
            } else {
                std::mem::take(&mut self.leftover)
            };
            if write.is_empty() {
                return Ok(transfer);
            }
            let room = self.transfer_size - transfer.len();
            if write.len() > room {
                transfer.extend_from_slice(&write[..room]);
                self.leftover = write[room..].to_vec();
                return Ok(transfer);
            }
            transfer.extend_from_slice(&write);
            let short = !write.len().is_multiple_of(self.max_packet_size);
            if short || transfer.len() == self.transfer_size {
                return Ok(transfer);
            }
        }
    }

    fn transfer_size(&self) -> usize {
        self.transfer_size
    }
}

impl BulkOut for MemoryOut {
    async fn write_transfer(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.tx.send(data).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other end of the memory pipe is gone",
            )
        })
    }

    fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }
}
