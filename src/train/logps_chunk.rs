//! A chunk of a stage's reference log-probs as it is stored while the precompute runs, so that a
//! stop or a crash keeps what was computed and a resume computes only the rest.
//!
//! A chunk holds consecutive pairs of the stage's pair list, whole scoring batches, in order,
//! with the key of the reference that scored them. Bytes (little-endian): `HONELP01`, the key's
//! length (u32) and UTF-8 bytes, the entry count (u64), per entry the pair's hash and the chosen
//! and rejected log-probs' f64 bits (u64 each), then the SHA-256 of everything before it. A chunk
//! that does not parse or whose checksum is wrong is unreadable, never half used.

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"HONELP01";

/// Reference log-probs of consecutive pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogpsChunk {
    /// Which reference computed them, and how (see `Trainer::reference_key`).
    pub key: String,
    /// `(pair hash, (chosen, rejected))`, in the pairs' order.
    pub entries: Vec<(u64, (f64, f64))>,
}

impl LogpsChunk {
    /// The chunk's bytes (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 4 + self.key.len() + 8 + 24 * self.entries.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (hash, (chosen, rejected)) in &self.entries {
            out.extend_from_slice(&hash.to_le_bytes());
            out.extend_from_slice(&chosen.to_bits().to_le_bytes());
            out.extend_from_slice(&rejected.to_bits().to_le_bytes());
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// The chunk in `bytes`; `None` when they are not a whole, intact chunk.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if Sha256::digest(body).as_slice() != sum {
            return None;
        }
        let mut r = Reader(body);
        if r.take(8)? != MAGIC {
            return None;
        }
        let key_len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let key = String::from_utf8(r.take(key_len)?.to_vec()).ok()?;
        let count = usize::try_from(r.u64()?).ok()?;
        if r.0.len() != count.checked_mul(24)? {
            return None;
        }
        let entries = (0..count)
            .map(|_| Some((r.u64()?, (f64::from_bits(r.u64()?), f64::from_bits(r.u64()?)))))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { key, entries })
    }
}

/// Reads a byte slice from the front.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_reads_back_bit_for_bit_and_any_damage_makes_it_unreadable() {
        let chunk = LogpsChunk {
            key: "cpu f32 pad 0".into(),
            entries: vec![(7, (-1.5, -0.1 + 0.2)), (u64::MAX, (f64::MIN_POSITIVE, -0.0))],
        };
        let bytes = chunk.to_bytes();
        let back = LogpsChunk::from_bytes(&bytes).unwrap();
        assert_eq!(back.key, chunk.key);
        let bits =
            |c: &LogpsChunk| c.entries.iter().map(|(h, (a, b))| (*h, a.to_bits(), b.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&chunk));
        for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
            assert!(LogpsChunk::from_bytes(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        for i in [0, 9, 20, bytes.len() - 40, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(LogpsChunk::from_bytes(&bad).is_none(), "flipped byte {i}");
        }
    }
}
