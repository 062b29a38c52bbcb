//! Zip archives of images, read with caps.
//!
//! An uploader controls everything in a zip: its entry count, the sizes its
//! headers declare (which may lie), how far each entry inflates, and its
//! paths. So the reader caps the entries, the total inflated bytes and each
//! entry's compression ratio, counting the bytes that really come out
//! rather than those declared; and it never creates a file from an entry's
//! path: paths only name entries in results and, for `train`, their class.

use std::io::{Read, Seek};

use zip::ZipArchive;

use crate::error::{quote, ErrorCode, JobError};

/// Most entries (files and folders) in one archive.
pub const MAX_ENTRIES: usize = 100_000;
/// Most bytes all entries of one archive inflate to.
pub const MAX_TOTAL_BYTES: u64 = 4 << 30;
/// Most bytes one entry inflates to.
pub const MAX_ENTRY_BYTES: u64 = crate::ml::image::MAX_IMAGE_BYTES;
/// Most an entry may inflate relative to its compressed size.
pub const MAX_RATIO: u64 = 200;

/// Whether a file is a zip archive, by its first bytes.
pub fn is_zip(path: &std::path::Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && (magic == *b"PK\x03\x04" || magic == *b"PK\x05\x06")
}

/// One entry's bytes, or why it could not be read.
pub struct Entry {
    /// Its path in the archive as shown to users: control characters
    /// replaced, long ones shortened. Never opened.
    pub name: String,
    /// Its path as stored (lossy UTF-8): `train` reads class folders from
    /// it. Never opened either.
    pub path: String,
    pub bytes: Result<Vec<u8>, String>,
}

/// Reads the entries of an archive one at a time.
pub struct Entries<R: Read + Seek> {
    archive: ZipArchive<R>,
    next: usize,
    /// Bytes inflated so far, from every entry read, whether it was kept.
    total: u64,
    /// The most all entries together may inflate to: the total cap, and
    /// at most `MAX_RATIO` times the archive's own size (entries can share
    /// compressed data, so each one's ratio alone bounds nothing).
    budget: u64,
}

impl<R: Read + Seek> Entries<R> {
    /// Opens an archive of `size` bytes.
    pub fn open(reader: R, size: u64) -> Result<Self, JobError> {
        let archive = ZipArchive::new(reader).map_err(|e| {
            JobError::new(
                ErrorCode::InvalidArchive,
                format!("the zip archive cannot be read: {e}"),
            )
        })?;
        if archive.len() > MAX_ENTRIES {
            return Err(JobError::new(
                ErrorCode::ArchiveTooLarge,
                format!(
                    "the archive has {} entries; at most {MAX_ENTRIES} are read",
                    archive.len()
                ),
            ));
        }
        Ok(Self {
            archive,
            next: 0,
            total: 0,
            budget: MAX_TOTAL_BYTES.min(size.max(1 << 20).saturating_mul(MAX_RATIO)),
        })
    }

    /// Entries, files and folders, in the archive.
    pub fn len(&self) -> usize {
        self.archive.len()
    }

    pub fn is_empty(&self) -> bool {
        self.archive.len() == 0
    }

    /// The next file entry worth reading: folders and the clutter archivers
    /// add (`__MACOSX/`, dot files) are skipped. `Err` ends the archive:
    /// it is corrupt past repair, or over the total size cap.
    pub fn next_entry(&mut self) -> Option<Result<Entry, JobError>> {
        while self.next < self.archive.len() {
            let index = self.next;
            self.next += 1;
            // Taken before the entry is opened: the archive is borrowed
            // while an entry is read.
            let listed = self
                .archive
                .name_for_index(index)
                .and_then(Result::ok)
                .map(|n| display_name(&n))
                .unwrap_or_else(|| format!("entry {index}"));
            let mut file = match self.archive.by_index(index) {
                Ok(file) => file,
                Err(zip::result::ZipError::UnsupportedArchive(why)) => {
                    return Some(Ok(Entry {
                        path: listed.clone(),
                        name: listed,
                        bytes: Err(format!("cannot be read: {why}")),
                    }));
                }
                Err(e) => {
                    return Some(Err(JobError::new(
                        ErrorCode::InvalidArchive,
                        format!("the zip archive is corrupt at entry {index}: {e}"),
                    )))
                }
            };
            // Names that are not UTF-8 are shown lossily; they only name.
            let raw = String::from_utf8_lossy(file.name_raw()).into_owned();
            let name = display_name(&raw);
            if file.is_dir() || is_clutter(&raw) {
                continue;
            }
            let declared = file.size();
            let compressed = file.compressed_size().max(1);
            if declared > MAX_ENTRY_BYTES {
                return Some(Ok(Entry {
                    path: raw.clone(),
                    bytes: Err(format!(
                        "inflates to {declared} bytes; an entry may have at most {MAX_ENTRY_BYTES}"
                    )),
                    name,
                }));
            }
            // The cap that binds first: this entry's own, its ratio's, or
            // what is left of the archive's total.
            let left = self.budget.saturating_sub(self.total);
            if left == 0 {
                return Some(Err(JobError::new(
                    ErrorCode::ArchiveTooLarge,
                    format!(
                        "the archive inflates to more than {} bytes ({MAX_RATIO} times its size, \
                         at most {MAX_TOTAL_BYTES})",
                        self.budget
                    ),
                )));
            }
            let limit = MAX_ENTRY_BYTES
                .min(compressed.saturating_mul(MAX_RATIO).max(64 << 10))
                .min(left);
            let mut bytes = Vec::new();
            if bytes.try_reserve(declared.min(limit) as usize).is_err() {
                return Some(Err(JobError::new(
                    ErrorCode::DataTooLarge,
                    "not enough memory to read the archive's next entry",
                )));
            }
            let read = (&mut file).take(limit + 1).read_to_end(&mut bytes);
            // Whatever was inflated counts, kept or not.
            self.total += bytes.len() as u64;
            let bytes = match read {
                Err(e) => Err(format!("cannot be inflated: {e}")),
                Ok(n) if n as u64 > limit => {
                    if limit == left {
                        return Some(Err(JobError::new(
                            ErrorCode::ArchiveTooLarge,
                            format!(
                                "the archive inflates to more than {} bytes ({MAX_RATIO} times \
                                 its size, at most {MAX_TOTAL_BYTES})",
                                self.budget
                            ),
                        )));
                    }
                    Err(format!(
                        "inflates past {limit} bytes from {compressed} (a compression ratio \
                         over {MAX_RATIO}, or over the {MAX_ENTRY_BYTES}-byte cap per entry)"
                    ))
                }
                Ok(_) => Ok(bytes),
            };
            return Some(Ok(Entry {
                name,
                path: raw,
                bytes,
            }));
        }
        None
    }
}

/// An entry's path as shown to users: control characters replaced, length
/// capped. Never used to open anything.
pub fn display_name(raw: &str) -> String {
    let clean: String = raw
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let quoted = quote(&clean);
    if quoted.len() == clean.len() + 2 {
        clean
    } else {
        quoted
    }
}

fn is_clutter(name: &str) -> bool {
    name.starts_with("__MACOSX/")
        || name
            .rsplit('/')
            .find(|part| !part.is_empty())
            .is_some_and(|last| last.starts_with('.'))
}

/// The folders an entry sits in for `train`: its first and, when there is
/// one, its second, from its stored path (`/` or `\\` separated). `None`
/// for a file outside any folder. Only labels: a folder named `..` is a
/// class named `..`, never a path. Control characters become `?`.
pub fn class_folders(path: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<&str> = path.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    let clean = |p: &str| -> String {
        p.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    match parts.as_slice() {
        [first, _file] => Some((clean(first), None)),
        [first, second, _, ..] => Some((clean(first), Some(clean(second)))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    fn archive(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            if name.ends_with('/') {
                out.add_directory(*name, SimpleFileOptions::default())
                    .unwrap();
            } else {
                out.start_file(*name, SimpleFileOptions::default()).unwrap();
                out.write_all(bytes).unwrap();
            }
        }
        out.finish().unwrap().into_inner()
    }

    fn read_all(bytes: Vec<u8>) -> Vec<(String, Result<usize, String>)> {
        let size = bytes.len() as u64;
        let mut entries = Entries::open(Cursor::new(bytes), size).unwrap();
        let mut out = Vec::new();
        while let Some(e) = entries.next_entry() {
            let e = e.unwrap();
            out.push((e.name, e.bytes.map(|b| b.len())));
        }
        out
    }

    #[test]
    fn folders_and_clutter_are_skipped() {
        let got = read_all(archive(&[
            ("cats/", vec![]),
            ("cats/a.png", vec![1, 2, 3]),
            ("__MACOSX/cats/._a.png", vec![0]),
            ("cats/.DS_Store", vec![0]),
            ("../../etc/passwd", vec![7; 5]),
        ]));
        assert_eq!(
            got,
            vec![
                ("cats/a.png".into(), Ok(3)),
                ("../../etc/passwd".into(), Ok(5)),
            ]
        );
    }

    #[test]
    fn a_bomb_entry_fails_alone() {
        // 50 MB of zeros deflates to ~50 kB: a ratio far past the cap.
        let got = read_all(archive(&[
            ("bomb.png", vec![0; 50 << 20]),
            ("fine.png", vec![1; 100]),
        ]));
        assert!(
            got[0].1.as_ref().unwrap_err().contains("compression ratio"),
            "{got:?}"
        );
        assert_eq!(got[1], ("fine.png".into(), Ok(100)));
    }

    #[test]
    fn garbage_is_an_invalid_archive() {
        let err = Entries::open(Cursor::new(b"PK\x03\x04 not really".to_vec()), 16)
            .err()
            .unwrap();
        assert_eq!(err.code, ErrorCode::InvalidArchive);
    }

    #[test]
    fn class_folders_come_from_the_stored_path() {
        let f = |p: &str| class_folders(p);
        assert_eq!(f("cats/a.png"), Some(("cats".into(), None)));
        assert_eq!(
            f("/cats/deep/a.png"),
            Some(("cats".into(), Some("deep".into())))
        );
        assert_eq!(
            f("cats\\a.png"),
            Some(("cats".into(), None)),
            "Windows separators"
        );
        assert_eq!(f("a.png"), None);
        assert_eq!(f("../x/a.png"), Some(("..".into(), Some("x".into()))));
        let long = format!("cats/{}.png", "x".repeat(300));
        assert_eq!(
            f(&long),
            Some(("cats".into(), None)),
            "long names keep their class"
        );
        assert_eq!(display_name("a\nb.png"), "a?b.png");
    }
}
