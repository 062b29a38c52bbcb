//! Reading a CSV file into typed columns.
//!
//! The file is read twice from local disk: the first pass decides each
//! column's type (and finds bad input, naming the row and column), the second
//! fills compact typed storage. Two passes keep memory at the size of the
//! parsed data instead of a copy of every cell as a string. Records come
//! through [`Records`], which bounds each one before reading it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::records::{Record, Records};
use crate::error::{quote, ErrorCode, JobError};
use crate::task::CancelToken;

/// More distinct values than this make a text column unusable as a one-hot
/// feature or a class label.
pub const MAX_LEVELS: usize = 1000;
/// Longest text that can be a category level or a class label, in bytes:
/// levels live in the model spec and labels in every prediction.
pub const MAX_LEVEL_BYTES: usize = 1024;
/// Distinct numbers kept per feature column while scanning. A feature's
/// numbers only matter as levels when the column turns out to be text (a
/// text column with more distinct numbers than this is refused); the target
/// keeps up to `MAX_LEVELS + 1`, as numbers can be class labels.
pub const MAX_FEATURE_NUMBERS: usize = 20;
/// Memory all columns' distinct-value sets may hold during a scan.
pub const DISTINCT_BUDGET: usize = 256 << 20;
/// What one kept distinct value costs beyond its bytes (the set's node and
/// the string's header), for the budget.
const DISTINCT_OVERHEAD: usize = 64;

/// Cell values read as "missing". An empty cell is the common case; the rest
/// are what spreadsheets and pandas commonly write.
const MISSING: &[&str] = &["", "NA", "N/A", "na", "n/a", "null", "NULL", "None", "?"];

pub fn is_missing(cell: &str) -> bool {
    MISSING.contains(&cell.trim())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Numeric,
    Categorical,
}

/// The code of a missing categorical cell.
pub const MISSING_CODE: u32 = u32::MAX;

/// A column's cells, four bytes each: a large file's table stays the size of
/// the tensors it becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    /// Values, with NaN where the cell was missing.
    Numeric(Vec<f32>),
    /// Codes into `levels`, with `MISSING_CODE` where the cell was missing.
    Categorical {
        codes: Vec<u32>,
        levels: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub data: ColumnData,
}

impl Column {
    pub fn kind(&self) -> ColumnKind {
        match self.data {
            ColumnData::Numeric(_) => ColumnKind::Numeric,
            ColumnData::Categorical { .. } => ColumnKind::Categorical,
        }
    }
}

/// What the first pass learns about a column.
#[derive(Debug, Clone, Default)]
pub struct ColumnStats {
    pub numeric: usize,
    pub text: usize,
    pub missing: usize,
    pub first_text: Option<(usize, String)>,
    pub first_missing: Option<usize>,
    pub all_integer: bool,
    /// Distinct non-missing values, up to `MAX_LEVELS + 1` (numbers in a
    /// feature column: up to `MAX_FEATURE_NUMBERS`).
    pub distinct: BTreeSet<String>,
    /// Distinct numbers seen, up to the column's cap.
    pub numbers: usize,
    /// More distinct numbers came than the column keeps.
    pub numbers_overflow: bool,
    /// The first value too long to be a level: its row and length.
    pub too_long: Option<(usize, usize)>,
}

impl ColumnStats {
    /// The levels of a column read as categories, or why it cannot be.
    pub fn levels(&self, name: &str) -> Result<Vec<String>, JobError> {
        self.check_level_lengths(name)?;
        if self.distinct.len() > MAX_LEVELS {
            return Err(JobError::new(
                ErrorCode::TooManyCategories,
                format!(
                    "column {} has more than {MAX_LEVELS} distinct values; leave it out with the \
                     `features` param",
                    quote(name)
                ),
            ));
        }
        if self.numbers_overflow {
            return Err(JobError::new(
                ErrorCode::TooManyCategories,
                format!(
                    "column {} mixes text with more than {MAX_FEATURE_NUMBERS} distinct numbers; \
                     fix the stray text, or leave the column out with the `features` param",
                    quote(name)
                ),
            ));
        }
        Ok(self.distinct.iter().cloned().collect())
    }

    /// Refuses a column used as categories that holds a value too long to
    /// be one.
    pub fn check_level_lengths(&self, name: &str) -> Result<(), JobError> {
        if let Some((row, bytes)) = self.too_long {
            return Err(JobError::new(
                ErrorCode::FieldTooLarge,
                format!(
                    "row {row}, column {}: a text value of {bytes} bytes cannot be a category \
                     or a class label (at most {MAX_LEVEL_BYTES} bytes); leave the column out \
                     with the `features` param",
                    quote(name)
                ),
            ));
        }
        Ok(())
    }
}

/// Reads the header row and checks it, so callers can resolve column names.
pub fn read_headers(path: &Path) -> Result<Vec<String>, JobError> {
    check_text(path)?;
    let cancel = CancelToken::default();
    let mut records = Records::open(path, &cancel)?;
    let headers: Vec<String> = match records.next_record()? {
        Some(r) => r.iter().map(|h| h.trim().to_owned()).collect(),
        None => return Err(JobError::new(ErrorCode::EmptyFile, "the file is empty")),
    };
    if headers.len() == 1 && headers[0].is_empty() {
        return Err(JobError::new(ErrorCode::EmptyFile, "the file is empty"));
    }
    if headers.iter().all(|h| h.parse::<f64>().is_ok()) {
        return Err(JobError::new(
            ErrorCode::NoHeader,
            format!(
                "the first line ({}) looks like data, not column names: add a header row",
                preview(&headers)
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, h) in headers.iter().enumerate() {
        if h.is_empty() {
            return Err(JobError::new(
                ErrorCode::NoHeader,
                format!("column {} has no name in the header row", i + 1),
            ));
        }
        if !seen.insert(h.as_str()) {
            return Err(JobError::new(
                ErrorCode::DuplicateColumn,
                format!("column {} appears twice in the header row", quote(h)),
            ));
        }
    }
    Ok(headers)
}

/// First pass: statistics for the wanted columns. `target`, when given, is
/// the column whose numbers may be class labels.
pub fn scan(
    path: &Path,
    headers: &[String],
    names: &[String],
    target: Option<&str>,
    cancel: &CancelToken,
) -> Result<(usize, Vec<ColumnStats>), JobError> {
    let indices = indices(headers, names)?;
    let caps: Vec<usize> = names
        .iter()
        .map(|n| {
            if Some(n.as_str()) == target {
                MAX_LEVELS + 1
            } else {
                MAX_FEATURE_NUMBERS
            }
        })
        .collect();
    let mut stats: Vec<ColumnStats> = names
        .iter()
        .map(|_| ColumnStats {
            all_integer: true,
            ..ColumnStats::default()
        })
        .collect();
    let mut held = 0usize;
    let mut rows = 0;
    for_each_record(path, headers, cancel, |row, record| {
        rows = row;
        for ((s, &i), &cap) in stats.iter_mut().zip(&indices).zip(&caps) {
            let cell = record.get(i).unwrap_or("").trim();
            if is_missing(cell) {
                s.missing += 1;
                s.first_missing.get_or_insert(row);
                continue;
            }
            let number = match cell.parse::<f64>() {
                Ok(v) if !(v as f32).is_finite() => {
                    return Err(JobError::new(
                        ErrorCode::NonFiniteValue,
                        format!(
                            "row {row}, column {}: {} is not a finite number within ±3.4e38",
                            quote(&headers[i]),
                            quote(cell)
                        ),
                    ))
                }
                Ok(v) => {
                    s.numeric += 1;
                    s.all_integer &= v.fract() == 0.0;
                    true
                }
                Err(_) => {
                    s.text += 1;
                    s.first_text
                        .get_or_insert_with(|| (row, crate::error::quote(cell)));
                    false
                }
            };
            if s.distinct.len() > MAX_LEVELS || s.distinct.contains(cell) {
                continue;
            }
            if number {
                if s.numbers >= cap {
                    s.numbers_overflow = true;
                    continue;
                }
                s.numbers += 1;
            }
            if cell.len() > MAX_LEVEL_BYTES {
                // Only a problem if the column is used as categories.
                s.too_long.get_or_insert((row, cell.len()));
                continue;
            }
            held += cell.len() + DISTINCT_OVERHEAD;
            if held > DISTINCT_BUDGET {
                return Err(JobError::new(
                    ErrorCode::DataTooLarge,
                    format!(
                        "the distinct values of the file's columns need more than {} MiB to \
                         scan; leave text columns out with the `features` param",
                        DISTINCT_BUDGET >> 20
                    ),
                ));
            }
            s.distinct.insert(cell.to_owned());
        }
        Ok(())
    })?;
    Ok((rows, stats))
}

/// Decides a column's kind from its statistics: text columns are
/// categorical, number columns numeric. A column of mostly numbers with a few
/// words in it is a typo, not a category, and is reported as such.
pub fn infer_kind(name: &str, stats: &ColumnStats) -> Result<ColumnKind, JobError> {
    match (stats.numeric, stats.text) {
        (_, 0) => Ok(ColumnKind::Numeric),
        (0, _) => Ok(ColumnKind::Categorical),
        (numeric, text) if text <= numeric => {
            let (row, value) = stats.first_text.clone().unwrap_or_default();
            Err(JobError::new(
                ErrorCode::InvalidNumber,
                format!("row {row}, column {}: {value} is not a number", quote(name)),
            ))
        }
        _ => Ok(ColumnKind::Categorical),
    }
}

/// Where one feature column goes in the matrix `load_matrix` fills.
#[derive(Debug, Clone)]
pub enum Slot {
    /// One input, written raw (NaN when missing) and standardized later.
    Numeric { offset: usize },
    /// One input per level, in `levels` order (sorted).
    Categorical { offset: usize, levels: Vec<String> },
}

/// Running mean and variance (Welford) of a numeric column's training rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    m2: f64,
}

impl Moments {
    pub fn add(&mut self, v: f64) {
        self.n += 1;
        let delta = v - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (v - self.mean);
    }

    pub fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

/// Second pass for training: parses the feature columns straight into
/// `out`, a row-major `rows × width` matrix with row `r` at row `place(r)`,
/// so no table of the features is ever held. Numbers are written raw (NaN
/// when missing), levels one-hot. Returns the target column, typed, and the
/// moments of each feature over the rows for which `is_train` holds
/// (meaningful for numeric slots).
#[allow(clippy::too_many_arguments)]
pub fn load_matrix(
    path: &Path,
    headers: &[String],
    features: &[(String, Slot)],
    target: (&str, ColumnKind),
    width: usize,
    out: &mut [f32],
    place: impl Fn(usize) -> usize,
    is_train: impl Fn(usize) -> bool,
    cancel: &crate::task::CancelToken,
) -> Result<(Column, Vec<Moments>), JobError> {
    let names: Vec<String> = features.iter().map(|(n, _)| n.clone()).collect();
    let indices = indices(headers, &names)?;
    let target_index = indices_of(headers, target.0)?;
    // One cell per row, reserved up front: a failed reservation is an
    // error, not an abort.
    let rows = out.len() / width.max(1);
    let too_large = |_| {
        JobError::new(
            ErrorCode::DataTooLarge,
            format!("not enough memory for the target column of {rows} rows"),
        )
    };
    let mut target_builder = match target.1 {
        ColumnKind::Numeric => {
            let mut v = Vec::new();
            v.try_reserve_exact(rows).map_err(too_large)?;
            Builder::Numeric(v)
        }
        ColumnKind::Categorical => {
            let mut v = Vec::new();
            v.try_reserve_exact(rows).map_err(too_large)?;
            Builder::Categorical(v, HashMap::new())
        }
    };
    let mut moments = vec![Moments::default(); features.len()];
    for_each_record(path, headers, cancel, |row, record| {
        let r = row - 1;
        let base = place(r) * width;
        for (((name, slot), &i), m) in features.iter().zip(&indices).zip(&mut moments) {
            let cell = record.get(i).unwrap_or("").trim();
            match slot {
                Slot::Numeric { offset } => {
                    let v = if is_missing(cell) {
                        f32::NAN
                    } else {
                        parse_number(row, name, cell)?
                    };
                    if !v.is_nan() && is_train(r) {
                        m.add(f64::from(v));
                    }
                    out[base + offset] = v;
                }
                Slot::Categorical { offset, levels } => {
                    if !is_missing(cell) {
                        if let Ok(slot) = levels.binary_search_by(|l| l.as_str().cmp(cell)) {
                            out[base + offset + slot] = 1.0;
                        }
                    }
                }
            }
        }
        let cell = record.get(target_index).unwrap_or("").trim();
        target_builder.push(row, target.0, cell)
    })?;
    Ok((
        Column {
            name: target.0.to_owned(),
            data: target_builder.finish(),
        },
        moments,
    ))
}

/// A numeric cell, rejecting text and values beyond f32's range.
pub fn parse_number(row: usize, name: &str, cell: &str) -> Result<f32, JobError> {
    match cell.parse::<f64>() {
        Ok(v) if (v as f32).is_finite() => Ok(v as f32),
        Ok(_) => Err(JobError::new(
            ErrorCode::NonFiniteValue,
            format!(
                "row {row}, column {}: {} is not a finite number within ±3.4e38",
                quote(name),
                quote(cell)
            ),
        )),
        Err(_) => Err(JobError::new(
            ErrorCode::InvalidNumber,
            format!(
                "row {row}, column {}: {} is not a number",
                quote(name),
                quote(cell)
            ),
        )),
    }
}

fn indices_of(headers: &[String], name: &str) -> Result<usize, JobError> {
    Ok(indices(headers, &[name.to_owned()])?[0])
}

enum Builder {
    Numeric(Vec<f32>),
    Categorical(Vec<u32>, HashMap<String, u32>),
}

impl Builder {
    fn push(&mut self, row: usize, name: &str, cell: &str) -> Result<(), JobError> {
        let missing = is_missing(cell);
        match self {
            Self::Numeric(values) if missing => values.push(f32::NAN),
            Self::Numeric(values) => values.push(parse_number(row, name, cell)?),
            Self::Categorical(codes, _) if missing => codes.push(MISSING_CODE),
            Self::Categorical(codes, levels) => {
                let next = levels.len() as u32;
                if next as usize >= MAX_LEVELS && !levels.contains_key(cell) {
                    return Err(JobError::new(
                        ErrorCode::TooManyCategories,
                        format!(
                            "column {} has more than {MAX_LEVELS} distinct values; \
                             leave it out with the `features` param",
                            quote(name)
                        ),
                    ));
                }
                let code = *levels.entry(cell.to_owned()).or_insert(next);
                codes.push(code);
            }
        }
        Ok(())
    }

    /// Renumbers categorical codes so levels are sorted: the encoding then
    /// depends only on the values, not on the order rows came in.
    fn finish(self) -> ColumnData {
        match self {
            Self::Numeric(values) => ColumnData::Numeric(values),
            Self::Categorical(codes, levels) => {
                let mut sorted: Vec<(String, u32)> = levels.into_iter().collect();
                sorted.sort();
                let mut remap = vec![0u32; sorted.len()];
                for (new, (_, old)) in sorted.iter().enumerate() {
                    remap[*old as usize] = new as u32;
                }
                ColumnData::Categorical {
                    codes: codes
                        .into_iter()
                        .map(|c| {
                            if c == MISSING_CODE {
                                c
                            } else {
                                remap[c as usize]
                            }
                        })
                        .collect(),
                    levels: sorted.into_iter().map(|(l, _)| l).collect(),
                }
            }
        }
    }
}

/// Each column's position by name (the first, where a name repeats): a
/// lookup per name, not a scan of a header that may have 50,000 columns.
pub fn column_index(headers: &[String]) -> std::collections::HashMap<&str, usize> {
    let mut index = std::collections::HashMap::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        index.entry(h.as_str()).or_insert(i);
    }
    index
}

fn indices(headers: &[String], names: &[String]) -> Result<Vec<usize>, JobError> {
    let index = column_index(headers);
    names
        .iter()
        .map(|n| {
            index.get(n.as_str()).copied().ok_or_else(|| {
                JobError::new(
                    ErrorCode::UnknownColumn,
                    format!(
                        "column {} is not in the file (its columns are: {})",
                        quote(n),
                        preview(headers)
                    ),
                )
            })
        })
        .collect()
}

/// Calls `f` with each data row (numbered from 1) until the end of the file.
pub fn for_each_record(
    path: &Path,
    headers: &[String],
    cancel: &CancelToken,
    mut f: impl FnMut(usize, &Record<'_>) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let mut records = Records::open(path, cancel)?;
    records.next_record()?;
    while let Some(record) = records.next_record()? {
        let row = record.row();
        if record.len() != headers.len() {
            return Err(JobError::new(
                ErrorCode::RaggedRow,
                format!(
                    "row {row} has {} fields but the header has {}",
                    record.len(),
                    headers.len()
                ),
            ));
        }
        f(row, &record)?;
    }
    Ok(())
}

/// Rejects empty files and binary data up front, with a clearer message than
/// a parse error on some random row would give.
fn check_text(path: &Path) -> Result<(), JobError> {
    let mut head = Vec::with_capacity(8192);
    File::open(path)
        .and_then(|f| f.take(8192).read_to_end(&mut head))
        .map_err(|e| JobError::storage(format!("reading input: {e}")))?;
    if head.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(JobError::new(ErrorCode::EmptyFile, "the file is empty"));
    }
    if head.contains(&0) {
        return Err(JobError::new(
            ErrorCode::NotCsv,
            "the file is not CSV text: it contains binary data",
        ));
    }
    Ok(())
}

fn preview(values: &[String]) -> String {
    let mut shown: Vec<String> = values.iter().take(8).map(|v| quote(v)).collect();
    if values.len() > 8 {
        shown.push(format!("… ({} in all)", values.len()));
    }
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::CancelToken;

    fn file(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text).unwrap();
        f
    }

    fn scan_all(text: &[u8]) -> Result<(usize, Vec<ColumnStats>), JobError> {
        let f = file(text);
        let headers = read_headers(f.path())?;
        scan(f.path(), &headers, &headers, None, &CancelToken::default())
    }

    fn code(r: Result<impl std::fmt::Debug, JobError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn bad_files_are_named() {
        assert_eq!(code(scan_all(b"")), ErrorCode::EmptyFile);
        assert_eq!(code(scan_all(b"\n\n")), ErrorCode::EmptyFile);
        assert_eq!(code(scan_all(b"1,2,3\n4,5,6\n")), ErrorCode::NoHeader);
        assert_eq!(code(scan_all(b"a,a\n1,2\n")), ErrorCode::DuplicateColumn);
        assert_eq!(code(scan_all(b"\x00\x01\x02PK\x03")), ErrorCode::NotCsv);
        assert_eq!(code(scan_all(b"a,b\n1,2\n3\n")), ErrorCode::RaggedRow);
        assert_eq!(
            code(scan_all(b"a,b\n1,2\n3,inf\n")),
            ErrorCode::NonFiniteValue
        );
        assert_eq!(code(scan_all(b"a,b\n1,\xff\xfe\n")), ErrorCode::NotCsv);
        let mut late_nul = b"a,b\n".to_vec();
        late_nul.extend(b"1,2\n".repeat(5000));
        late_nul.extend(b"3,x\x00y\n");
        assert_eq!(code(scan_all(&late_nul)), ErrorCode::NotCsv);
    }

    #[test]
    fn ragged_row_message_names_the_row() {
        let err = scan_all(b"a,b\n1,2\n3,4\n5,6,7\n").unwrap_err();
        assert!(err.message.contains("row 3"), "{}", err.message);
        assert!(err.message.contains("3 fields"), "{}", err.message);
    }

    #[test]
    fn kinds_are_inferred_and_typos_reported() {
        let (rows, stats) =
            scan_all(b"x,color,y\n1,red,1\n2.5,blue,2\n,green,oops\n4,red,4\n").unwrap();
        assert_eq!(rows, 4);
        assert_eq!(infer_kind("x", &stats[0]).unwrap(), ColumnKind::Numeric);
        assert_eq!(stats[0].missing, 1);
        assert_eq!(
            infer_kind("color", &stats[1]).unwrap(),
            ColumnKind::Categorical
        );
        let err = infer_kind("y", &stats[2]).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidNumber);
        assert!(
            err.message.contains("row 3") && err.message.contains("\"y\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn distinct_values_are_bounded_per_column() {
        // A feature keeps few distinct numbers; the target keeps enough to
        // be class labels.
        let mut text = String::from("x,y\n");
        for i in 0..500 {
            text.push_str(&format!("{i},{i}\n"));
        }
        let f = file(text.as_bytes());
        let headers = read_headers(f.path()).unwrap();
        let (_, stats) = scan(
            f.path(),
            &headers,
            &headers,
            Some("y"),
            &CancelToken::default(),
        )
        .unwrap();
        assert_eq!(stats[0].distinct.len(), MAX_FEATURE_NUMBERS);
        assert!(stats[0].numbers_overflow);
        assert_eq!(stats[1].distinct.len(), 500);
        assert_eq!(
            stats[0].levels("x").unwrap_err().code,
            ErrorCode::TooManyCategories
        );
        assert_eq!(stats[1].levels("y").unwrap().len(), 500);
    }

    #[test]
    fn long_text_cannot_be_a_level_and_messages_quote_it_short() {
        let long = "w".repeat(MAX_LEVEL_BYTES + 1);
        let (_, stats) = scan_all(format!("a,b\n1,{long}\n").as_bytes()).unwrap();
        assert_eq!(
            stats[1].levels("b").unwrap_err().code,
            ErrorCode::FieldTooLarge
        );
        let err = scan_all(format!("a,b\n1,2\n{},2\n1,2\n2,3\n", "9".repeat(5000)).as_bytes());
        assert_eq!(err.unwrap_err().code, ErrorCode::NonFiniteValue);
        let err = infer_kind(
            "a",
            &scan_all(format!("a\n1\n2\n{}\n", "z".repeat(1000)).as_bytes())
                .unwrap()
                .1[0],
        )
        .unwrap_err();
        assert!(err.message.len() < 300, "{}", err.message);
    }

    #[test]
    fn unknown_column_lists_the_real_ones() {
        let f = file(b"a,b\n1,2\n");
        let headers = read_headers(f.path()).unwrap();
        let err = scan(
            f.path(),
            &headers,
            &["c".into()],
            None,
            &CancelToken::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownColumn);
        assert!(err.message.contains("\"a\", \"b\""), "{}", err.message);
    }
}
