//! Reading CSV records with every allocation bounded before it is made.
//!
//! The `csv` crate grows its record buffer to whatever the file holds: one
//! 2 GiB cell, or a header of ten million columns, becomes that much memory
//! before any check of ours could run. This reader drives `csv_core` with
//! fixed buffers instead, so a record that would pass a limit fails the
//! task with a code naming that limit, having spent at most the limit.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{ErrorCode, JobError};
use crate::task::CancelToken;

/// Most columns a file may have.
pub const MAX_COLUMNS: usize = 50_000;
/// Largest single cell (or column name), in bytes.
pub const MAX_FIELD_BYTES: usize = 64 << 10;
/// Largest record (a whole row), in bytes: the reader's one big buffer.
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// Bytes read from the file at a time.
const READ_CHUNK: usize = 64 << 10;
/// Rows between cancellation checks (each refill checks too, so one huge
/// row cannot hold a cancel back either).
const CANCEL_EVERY: usize = 1024;

/// A streaming reader of a CSV file's records: the header first (row 0),
/// then data rows numbered from 1.
pub struct Records<'c> {
    source: Box<dyn Read + 'c>,
    core: csv_core::Reader,
    input: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    out: Vec<u8>,
    ends: Vec<usize>,
    fields: usize,
    /// The record last read, as text, and where each field ends in it.
    text: String,
    bounds: Vec<usize>,
    row: usize,
    started: bool,
    cancel: &'c CancelToken,
}

impl<'c> Records<'c> {
    pub fn open(path: &Path, cancel: &'c CancelToken) -> Result<Self, JobError> {
        let file =
            File::open(path).map_err(|e| JobError::storage(format!("opening input: {e}")))?;
        Ok(Self::from_reader(file, cancel))
    }

    /// Reads CSV from any source (the fuzz targets read from memory).
    pub fn from_reader(source: impl Read + 'c, cancel: &'c CancelToken) -> Self {
        Self {
            source: Box::new(source),
            core: csv_core::Reader::new(),
            input: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            eof: false,
            out: vec![0; MAX_RECORD_BYTES],
            ends: vec![0; MAX_COLUMNS],
            fields: 0,
            text: String::new(),
            bounds: Vec::new(),
            row: 0,
            started: false,
            cancel,
        }
    }

    /// Reads the next record; `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, JobError> {
        let mut written = 0;
        self.fields = 0;
        loop {
            if self.start == self.end && !self.eof {
                self.refill()?;
            }
            let (result, read, wrote, ended) = self.core.read_record(
                &self.input[self.start..self.end],
                &mut self.out[written..],
                &mut self.ends[self.fields..],
            );
            self.start += read;
            written += wrote;
            self.fields += ended;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    return Err(JobError::new(
                        ErrorCode::FieldTooLarge,
                        format!(
                            "{} is larger than the limit of {} MiB per row",
                            self.naming_next(),
                            MAX_RECORD_BYTES >> 20
                        ),
                    ))
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    return Err(JobError::new(
                        ErrorCode::TooManyColumns,
                        format!(
                            "{} has more than {MAX_COLUMNS} columns, the most a file may have",
                            self.naming_next()
                        ),
                    ))
                }
                csv_core::ReadRecordResult::Record => {
                    self.row += 1;
                    if self.row.is_multiple_of(CANCEL_EVERY) {
                        self.cancel.check()?;
                    }
                    self.decode(written)?;
                    return Ok(Some(Record {
                        text: &self.text,
                        bounds: &self.bounds,
                        row: self.row - 1,
                    }));
                }
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// "the header row" or "row N", for the record being read.
    fn naming_next(&self) -> String {
        match self.row {
            0 => "the header row".into(),
            n => format!("row {n}"),
        }
    }

    fn refill(&mut self) -> Result<(), JobError> {
        self.cancel.check()?;
        let n = self
            .source
            .read(&mut self.input)
            .map_err(|e| JobError::storage(format!("reading input: {e}")))?;
        self.start = 0;
        self.end = n;
        self.eof = n == 0;
        if !self.started {
            self.started = true;
            // A UTF-8 byte-order mark, as spreadsheets write it, is not
            // part of the first column's name.
            if self.input[..n].starts_with(b"\xEF\xBB\xBF") {
                self.start = 3;
            }
        }
        Ok(())
    }

    /// Checks the record just read and keeps it as text.
    fn decode(&mut self, written: usize) -> Result<(), JobError> {
        let row = self.row - 1;
        let name = || match row {
            0 => "the header row".to_owned(),
            n => format!("row {n}"),
        };
        let bytes = &self.out[..written];
        let ends = &self.ends[..self.fields];
        let mut begin = 0;
        for (i, &end) in ends.iter().enumerate() {
            if end - begin > MAX_FIELD_BYTES {
                return Err(JobError::new(
                    ErrorCode::FieldTooLarge,
                    format!(
                        "{}, column {}: a cell of {} bytes is over the limit of {} KiB",
                        name(),
                        i + 1,
                        end - begin,
                        MAX_FIELD_BYTES >> 10
                    ),
                ));
            }
            begin = end;
        }
        // Each field must be UTF-8 on its own: fields are stored end to
        // end, and two halves of a character in two fields would read as
        // one valid text.
        let text = std::str::from_utf8(bytes)
            .ok()
            .filter(|text| ends.iter().all(|&end| text.is_char_boundary(end)))
            .ok_or_else(|| {
                JobError::new(
                    ErrorCode::NotCsv,
                    format!("{} is not valid UTF-8 text", name()),
                )
            })?;
        if text.contains('\0') {
            return Err(JobError::new(
                ErrorCode::NotCsv,
                format!("{} contains a NUL byte: the file is not CSV text", name()),
            ));
        }
        self.text.clear();
        self.text.push_str(text);
        self.bounds.clear();
        self.bounds.extend_from_slice(ends);
        Ok(())
    }
}

/// One record: its fields as text.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    text: &'a str,
    bounds: &'a [usize],
    row: usize,
}

impl<'a> Record<'a> {
    /// Its number: 0 for the header, then data rows from 1.
    pub fn row(&self) -> usize {
        self.row
    }

    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&'a str> {
        let end = *self.bounds.get(i)?;
        let start = if i == 0 { 0 } else { self.bounds[i - 1] };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text).unwrap();
        f
    }

    fn all(text: &[u8]) -> Result<Vec<Vec<String>>, JobError> {
        let f = file(text);
        let cancel = CancelToken::default();
        let mut records = Records::open(f.path(), &cancel)?;
        let mut out = Vec::new();
        while let Some(r) = records.next_record()? {
            out.push(r.iter().map(str::to_owned).collect());
        }
        Ok(out)
    }

    #[test]
    fn reads_quoted_fields_and_skips_a_bom_and_blank_lines() {
        let rows = all(b"\xEF\xBB\xBFa,b\n\"x,1\",\"say \"\"hi\"\"\"\n\n3,4\r\n").unwrap();
        assert_eq!(
            rows,
            vec![
                vec!["a".to_owned(), "b".into()],
                vec!["x,1".into(), "say \"hi\"".into()],
                vec!["3".into(), "4".into()],
            ]
        );
    }

    #[test]
    fn a_character_split_across_two_fields_is_not_text() {
        // Together the fields' bytes are valid UTF-8 (a BOM), one by one
        // they are not. (Found by the csv fuzz target: it panicked.)
        let err = all(b"a,b\n\xEF\xBB,\xBF\n").unwrap_err();
        assert_eq!(err.code, ErrorCode::NotCsv, "{err}");
        assert!(err.message.contains("row 1"), "{err}");
        let cancel = CancelToken::default();
        let mut records = Records::from_reader(&b"\"\xEF\xBB\",\xBF\n"[..], &cancel);
        assert!(records.next_record().is_err());
    }

    #[test]
    fn limits_are_named_before_memory_is_spent() {
        let mut wide = "c,".repeat(MAX_COLUMNS + 5).into_bytes();
        wide.push(b'\n');
        assert_eq!(all(&wide).unwrap_err().code, ErrorCode::TooManyColumns);
        let mut big_cell = b"a,b\n1,".to_vec();
        big_cell.extend(std::iter::repeat_n(b'x', MAX_FIELD_BYTES + 1));
        big_cell.push(b'\n');
        let err = all(&big_cell).unwrap_err();
        assert_eq!(err.code, ErrorCode::FieldTooLarge);
        assert!(err.message.contains("row 1, column 2"), "{}", err.message);
        let mut huge_cell = b"a\n".to_vec();
        huge_cell.extend(std::iter::repeat_n(b'x', MAX_RECORD_BYTES + 10));
        let err = all(&huge_cell).unwrap_err();
        assert_eq!(err.code, ErrorCode::FieldTooLarge);
        assert!(err.message.contains("row 1"), "{}", err.message);
    }

    #[test]
    fn a_cancel_stops_a_long_read() {
        let f = file(&b"1,2\n".repeat(10_000));
        let cancel = CancelToken::default();
        let mut records = Records::open(f.path(), &cancel).unwrap();
        records.next_record().unwrap();
        cancel.cancel();
        let err = loop {
            match records.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("read to the end despite the cancel"),
                Err(e) => break e,
            }
        };
        assert!(err.is_cancelled());
    }
}
