//! The file image of a loaded workbook, read again from disk when needed instead of held for
//! the workbook's life. A workbook keeps where its file is and how to know it is still the
//! file it loaded: its identity (size, modification time, inode) and a CRC-32 of the whole
//! image taken at load. A read that finds anything else fails with
//! [`SheetsError::ChangedOnDisk`] instead of mixing two versions of the file.
//!
//! The image read at load stays pinned until the workbook's first loads are done
//! ([`FileImage::release`]); after that, a whole read (calamine, a fork's save) reads the file
//! again, and the streaming reader reads just the compressed bytes of the parts it needs.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Result, SheetsError};
use crate::workspace::FileIdentity;
use crate::xlsx_reader::PartSource;

pub struct FileImage {
    id: String,
    path: PathBuf,
    identity: FileIdentity,
    len: u64,
    crc: u32,
    /// The image read at load, until released. (No weak reference is kept to it: a `Weak`
    /// of an `Arc<[u8]>` keeps the whole allocation alive.)
    pinned: Mutex<Option<Arc<[u8]>>>,
    /// Set once a read found the file changed: the cache loads it again.
    changed: AtomicBool,
}

impl std::fmt::Debug for FileImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileImage").field("path", &self.path).field("len", &self.len).finish()
    }
}

impl FileImage {
    /// The image of `path` (whose identity was `identity` when it was read), pinned.
    pub fn new(id: &str, path: &Path, identity: FileIdentity, image: Arc<[u8]>) -> Self {
        Self {
            id: id.to_string(),
            path: path.to_path_buf(),
            identity,
            len: image.len() as u64,
            crc: crc32fast::hash(&image),
            pinned: Mutex::new(Some(image)),
            changed: AtomicBool::new(false),
        }
    }

    /// Size of the image in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the whole image read at load is still in memory.
    pub fn in_memory(&self) -> bool {
        self.held().is_some()
    }

    /// Whether the image read at load is still held.
    pub fn is_pinned(&self) -> bool {
        self.pinned.lock().is_some()
    }

    /// Let go of the image read at load (it is freed once no load holds it).
    pub fn release(&self) {
        drop(self.pinned.lock().take());
    }

    fn held(&self) -> Option<Arc<[u8]>> {
        self.pinned.lock().clone()
    }

    /// Whether a read found the file no longer the one loaded.
    pub fn has_changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    fn changed(&self, what: impl Into<String>) -> SheetsError {
        self.changed.store(true, Ordering::Relaxed);
        SheetsError::ChangedOnDisk { workbook_id: self.id.clone(), what: what.into() }
    }

    fn unreadable(&self, e: impl std::fmt::Display) -> SheetsError {
        SheetsError::Unreadable {
            workbook_id: self.id.clone(),
            reason: format!("cannot read {} again: {e}", self.path.display()),
        }
    }

    /// The file as it was loaded: the image held, or the file read again and checked to be
    /// the same one (identity, size, CRC-32).
    pub fn whole(&self) -> Result<Arc<[u8]>> {
        if let Some(img) = self.held() {
            return Ok(img);
        }
        self.check_identity()?;
        self.read_verified(&self.path)
    }

    /// The same bytes from a copy of the file (a fork's base copy), checked by size and CRC-32;
    /// the file itself when the copy is missing or differs.
    pub fn whole_from_copy(&self, copy: &Path) -> Result<Arc<[u8]>> {
        if let Some(img) = self.held() {
            return Ok(img);
        }
        match self.read_verified(copy) {
            Ok(img) => Ok(img),
            Err(e) => {
                tracing::debug!(workbook = %self.id, copy = %copy.display(), "copy not usable ({e}); reading the file");
                self.whole()
            }
        }
    }

    fn check_identity(&self) -> Result<()> {
        let now = FileIdentity::of(&self.path).map_err(|e| self.changed(format!("it cannot be opened: {e}")))?;
        if now != self.identity {
            return Err(self.changed(if now.len != self.identity.len {
                format!("its size is now {} bytes, it was {}", now.len, self.identity.len)
            } else {
                "its modification time or inode differs".to_string()
            }));
        }
        Ok(())
    }

    fn read_verified(&self, path: &Path) -> Result<Arc<[u8]>> {
        let f = std::fs::File::open(path).map_err(|e| self.unreadable(e))?;
        let mut buf = Vec::with_capacity(self.len as usize);
        f.take(self.len + 1).read_to_end(&mut buf).map_err(|e| self.unreadable(e))?;
        if buf.len() as u64 != self.len {
            return Err(self.changed(format!("{} bytes where {} were loaded", buf.len(), self.len)));
        }
        if crc32fast::hash(&buf) != self.crc {
            return Err(self.changed("its content differs (checksum)"));
        }
        Ok(Arc::from(buf))
    }
}

impl PartSource for FileImage {
    /// `len` bytes at `start`: from the image when held, else read from the file after
    /// checking its identity (the reader checks each part's own CRC-32 after inflating).
    fn part(&self, start: usize, len: usize) -> Result<(Arc<[u8]>, usize)> {
        if let Some(img) = self.held() {
            return Ok((img, start));
        }
        let end = start.checked_add(len).filter(|&e| e as u64 <= self.len);
        if end.is_none() {
            return Err(SheetsError::Internal(format!("part {start}+{len} beyond the file's {} bytes", self.len)));
        }
        self.check_identity()?;
        let mut f = std::fs::File::open(&self.path).map_err(|e| self.unreadable(e))?;
        f.seek(SeekFrom::Start(start as u64)).map_err(|e| self.unreadable(e))?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut buf).map_err(|e| self.unreadable(e))?;
        if buf.len() != len {
            return Err(self.changed("it ends early"));
        }
        Ok((Arc::from(buf), 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gemba-image-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn image_of(dir: &Path, bytes: &[u8]) -> (PathBuf, FileImage) {
        let path = dir.join("book.bin");
        std::fs::write(&path, bytes).unwrap();
        let identity = FileIdentity::of(&path).unwrap();
        let img = FileImage::new("wb", &path, identity, Arc::from(bytes.to_vec()));
        (path, img)
    }

    #[test]
    fn released_image_is_read_again_and_parts_come_from_the_file() {
        let dir = tempdir("reread");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (_, img) = image_of(&dir, &bytes);
        assert!(img.is_pinned());
        img.release();
        assert!(!img.is_pinned());
        let whole = img.whole().unwrap();
        assert_eq!(&whole[..], &bytes[..]);
        assert!(!img.in_memory(), "a whole read again is the caller's, not kept");
        let (buf, at) = img.part(100, 50).unwrap();
        assert_eq!(&buf[at..at + 50], &bytes[100..150]);
        let (buf, at) = img.part(9_000, 1_000).unwrap();
        assert_eq!((buf.len(), at), (1_000, 0));
        assert_eq!(&buf[..], &bytes[9_000..]);
        assert!(img.part(9_500, 1_000).is_err());
    }

    #[test]
    fn a_changed_file_is_refused_with_a_typed_error() {
        let dir = tempdir("changed");
        let (path, img) = image_of(&dir, b"first version of the file");
        img.release();
        std::fs::write(&path, b"second version, longer than the first").unwrap();
        assert!(!img.has_changed());
        let e = img.whole().unwrap_err();
        assert!(img.has_changed());
        assert!(matches!(e, SheetsError::ChangedOnDisk { .. }), "{e}");
        assert!(e.to_string().contains("changed on disk"), "{e}");
        assert!(matches!(img.part(0, 4), Err(SheetsError::ChangedOnDisk { .. })));
    }

    #[test]
    fn same_size_and_identity_but_other_content_is_caught_by_the_checksum() {
        let dir = tempdir("checksum");
        let (path, img) = image_of(&dir, b"aaaa");
        let identity = FileIdentity::of(&path).unwrap();
        std::fs::write(&path, b"bbbb").unwrap();
        // Put the old modification time back: only the content tells them apart.
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(identity.modified.unwrap()).unwrap();
        drop(f);
        assert_eq!(FileIdentity::of(&path).unwrap(), identity);
        img.release();
        assert!(matches!(img.whole(), Err(SheetsError::ChangedOnDisk { .. })));
    }

    #[test]
    fn a_copy_with_the_same_bytes_stands_in_for_a_changed_file() {
        let dir = tempdir("copy");
        let (path, img) = image_of(&dir, b"the loaded bytes");
        let copy = dir.join("copy.bin");
        std::fs::write(&copy, b"the loaded bytes").unwrap();
        img.release();
        std::fs::write(&path, b"edited elsewhere").unwrap();
        assert_eq!(&img.whole_from_copy(&copy).unwrap()[..], b"the loaded bytes");
        std::fs::write(&copy, b"damaged copy!!!!").unwrap();
        assert!(matches!(img.whole_from_copy(&copy), Err(SheetsError::ChangedOnDisk { .. })));
    }
}
