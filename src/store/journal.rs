//! The embedded store's write-ahead journal: every group of write sets is
//! appended to one file and made durable with one `fdatasync`, and the
//! redb file is written behind it (non-durable commits, made durable by a
//! checkpoint now and then). After a crash, the records written since the
//! last checkpoint are read back and applied again.
//!
//! Why: a durable redb commit writes every B-tree page a group touched
//! (about three 4 KiB pages per command: the answer record's leaf, the
//! session's leaf, branch pages, the allocator, the header) before its
//! `fdatasync`; a journal record is the write set itself, a few hundred
//! bytes per command, in one `pwrite`.
//!
//! The files are preallocated (zeros) so that a record overwrites blocks
//! that already exist: its `fdatasync` then writes data only, not the
//! file's size. Two files take turns: each checkpoint starts a new
//! generation, whose records are written from the start of the other
//! file while the checkpoint writes the previous generation to redb (in
//! the background); the checkpoint's durable transaction stores the new
//! generation, which makes the old file's records redundant. So on start
//! the records of the stored generation `g` are replayed (file `g % 2`),
//! then those of `g + 1` (the other file: written while a checkpoint that
//! did not finish was running). A record of an older generation left
//! beyond the end of the current ones is never replayed.
//!
//! A record: `length u32 | crc32 u32 | generation u64 | seq u64 | payload`
//! (little-endian; the CRC covers generation, seq and payload). Reading
//! stops at the first record that is short, fails its CRC, belongs to
//! another generation or breaks the sequence: a record torn by a crash is
//! the last one written, and nobody was told it was durable.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Table, Write};

/// Bytes of zeros each file is given up front: records overwrite them.
pub(super) const PREALLOCATED: u64 = 8 << 20;

/// Past this many bytes of records, the writer checkpoints (bounds the
/// replay after a crash and the records held in memory by the overlay).
pub(super) const CHECKPOINT_AFTER: u64 = 4 << 20;

const HEADER: usize = 4 + 4 + 8 + 8;

/// The journal's two files, written at `offset` of the file of
/// `generation`.
pub(super) struct Journal {
    files: [File; 2],
    generation: u64,
    seq: u64,
    offset: u64,
    /// Bytes written since the last `fdatasync`.
    unsynced: bool,
}

/// Where the journal of the database at `db` lives: beside it, the file of
/// even generations first.
pub(super) fn file_paths(db: &Path) -> [PathBuf; 2] {
    ["-journal", "-journal.1"].map(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

impl Journal {
    /// Opens (or creates, 0600) the journal of the database at `db` and
    /// reads back every record of `generation` and then of the next one,
    /// in order. The journal then waits for [`Journal::restart`].
    pub(super) fn open(db: &Path, generation: u64) -> std::io::Result<(Journal, Vec<Vec<Write>>)> {
        let [even, odd] = file_paths(db);
        let mut files = [open_file(&even)?, open_file(&odd)?];
        let mut groups = Vec::new();
        for generation in [generation, generation + 1] {
            let file = &mut files[(generation % 2) as usize];
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(0))?;
            file.read_to_end(&mut bytes)?;
            groups.extend(read_records(&bytes, generation));
        }
        for file in &files {
            preallocate(file)?;
        }
        let journal = Journal {
            files,
            generation,
            seq: 0,
            offset: 0,
            unsynced: false,
        };
        Ok((journal, groups))
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of records since the last checkpoint.
    pub(super) fn len(&self) -> u64 {
        self.offset
    }

    /// Starts over at the beginning of the new generation's file, whose
    /// records are redundant: stored by a checkpoint that finished (see
    /// the module's comment).
    pub(super) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.seq = 0;
        self.offset = 0;
    }

    /// Appends one group's writes as one record (not yet durable).
    pub(super) fn append(&mut self, writes: &[&Write]) -> std::io::Result<()> {
        let record = encode_record(self.generation, self.seq, writes);
        self.file().write_all_at(&record, self.offset)?;
        self.offset += record.len() as u64;
        self.seq += 1;
        self.unsynced = true;
        Ok(())
    }

    /// Makes every appended record durable.
    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file().sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn file(&self) -> &File {
        &self.files[(self.generation % 2) as usize]
    }
}

fn open_file(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn preallocate(file: &File) -> std::io::Result<()> {
    if file.metadata()?.len() >= PREALLOCATED {
        return Ok(());
    }
    file.set_len(PREALLOCATED)?;
    // set_len leaves a hole; written zeros are real blocks, so a record's
    // fdatasync later does not allocate.
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < PREALLOCATED {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()
}

pub(super) fn encode_record(generation: u64, seq: u64, writes: &[&Write]) -> Vec<u8> {
    let mut record = vec![0u8; HEADER];
    record[8..16].copy_from_slice(&generation.to_le_bytes());
    record[16..24].copy_from_slice(&seq.to_le_bytes());
    encode_writes(writes, &mut record);
    let length = (record.len() - HEADER) as u32;
    let crc = crc32fast::hash(&record[8..]);
    record[0..4].copy_from_slice(&length.to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    record
}

/// `count u32`, then per write: `op u8` (0 put, 1 delete), `table u8`,
/// `key length u32`, key, and for a put `value length u32`, value.
fn encode_writes(writes: &[&Write], out: &mut Vec<u8>) {
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for write in writes {
        let (op, table, key, value) = match write {
            Write::Put(table, key, value) => (0u8, *table, key, Some(value)),
            Write::Delete(table, key) => (1u8, *table, key, None),
        };
        out.push(op);
        out.push(table.index() as u8);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        if let Some(value) = value {
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }
}

/// Every whole record of `generation` from the start, in order, up to the
/// first one that is not (see the module's comment).
fn read_records(bytes: &[u8], generation: u64) -> Vec<Vec<Write>> {
    let mut groups = Vec::new();
    let mut at = 0usize;
    let mut expected_seq = 0u64;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let length = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
        let Some(body) = bytes.get(at + 8..at + HEADER + length) else {
            break;
        };
        let record_generation = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
        let seq = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
        if crc32fast::hash(body) != crc || record_generation != generation || seq != expected_seq {
            break;
        }
        let Some(writes) = decode_writes(&body[16..]) else {
            break;
        };
        groups.push(writes);
        expected_seq += 1;
        at += HEADER + length;
    }
    groups
}

fn decode_writes(mut bytes: &[u8]) -> Option<Vec<Write>> {
    let count = take_u32(&mut bytes)?;
    let mut writes = Vec::new();
    for _ in 0..count {
        let op = *take(&mut bytes, 1)?.first()?;
        let table = *Table::ALL.get(usize::from(*take(&mut bytes, 1)?.first()?))?;
        let key_length = take_u32(&mut bytes)? as usize;
        let key = String::from_utf8(take(&mut bytes, key_length)?.to_vec()).ok()?;
        writes.push(match op {
            0 => {
                let value_length = take_u32(&mut bytes)? as usize;
                Write::Put(table, key, take(&mut bytes, value_length)?.to_vec())
            }
            1 => Write::Delete(table, key),
            _ => return None,
        });
    }
    bytes.is_empty().then_some(writes)
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Some(head)
}

fn take_u32(bytes: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Write {
        Write::Put(Table::Vars, key.into(), value.as_bytes().to_vec())
    }

    #[test]
    fn records_read_back_in_order_and_stop_at_a_torn_one() {
        let writes = [put("a", "1"), Write::Delete(Table::Replies, "b".into())];
        let refs: Vec<&Write> = writes.iter().collect();
        let mut bytes = encode_record(7, 0, &refs);
        bytes.extend(encode_record(7, 1, &[&put("c", "2")]));
        let whole = bytes.len();
        bytes.extend(encode_record(7, 2, &[&put("d", "3")]));
        assert_eq!(read_records(&bytes, 7).len(), 3);
        assert_eq!(read_records(&bytes, 7)[0], writes.to_vec());
        // Torn: the last record cut short, or a byte of it flipped.
        assert_eq!(read_records(&bytes[..bytes.len() - 1], 7).len(), 2);
        let mut flipped = bytes.clone();
        flipped[whole + HEADER + 2] ^= 1;
        assert_eq!(read_records(&flipped, 7).len(), 2);
        // Another generation's records are never replayed.
        assert_eq!(read_records(&bytes, 8).len(), 0);
    }

    #[test]
    fn the_next_generation_is_read_from_the_other_file_after_this_one() {
        let dir = std::env::temp_dir().join(format!("sb-journal-two-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("db.redb");
        let (mut journal, groups) = Journal::open(&db, 4).unwrap();
        assert!(groups.is_empty());
        // Generation 4, then 5 while 4's checkpoint runs.
        journal.restart(4);
        journal.append(&[&put("a", "1")]).unwrap();
        journal.restart(5);
        journal.append(&[&put("a", "2")]).unwrap();
        journal.append(&[&put("b", "3")]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let (_, groups) = Journal::open(&db, 4).unwrap();
        let expected = [put("a", "1"), put("a", "2"), put("b", "3")].map(|w| vec![w]);
        assert_eq!(groups, expected, "4's checkpoint did not finish");
        let (_, groups) = Journal::open(&db, 5).unwrap();
        assert_eq!(groups, expected[1..], "4's checkpoint finished");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_stale_record_of_the_same_generation_out_of_sequence_is_not_replayed() {
        let mut bytes = encode_record(3, 0, &[&put("a", "1")]);
        bytes.extend(encode_record(3, 5, &[&put("b", "2")]));
        assert_eq!(read_records(&bytes, 3).len(), 1);
        assert!(
            read_records(&[0u8; 64], 3).is_empty(),
            "zeros are no record"
        );
    }
}
