//! Reading a CSV file into typed columns.
//!
//! The file is read twice from local disk: the first pass decides each
//! column's type (and finds bad input, naming the row and column), the second
//! fills compact typed storage. Two passes keep memory at the size of the
//! parsed data instead of a copy of every cell as a string.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{ErrorCode, JobError};

/// More distinct values than this make a text column unusable as a one-hot
/// feature or a class label.
pub const MAX_LEVELS: usize = 1000;

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
    /// Distinct non-missing values, up to `MAX_LEVELS + 1`.
    pub distinct: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub rows: usize,
    pub headers: Vec<String>,
    pub columns: Vec<Column>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Reads the header row and checks it, so callers can resolve column names.
pub fn read_headers(path: &Path) -> Result<Vec<String>, JobError> {
    check_text(path)?;
    let mut reader = reader(path)?;
    let headers = reader.headers().map_err(|e| csv_error(e, &[]))?.clone();
    let headers: Vec<String> = headers.iter().map(|h| h.trim().to_owned()).collect();
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
                format!("column \"{h}\" appears twice in the header row"),
            ));
        }
    }
    Ok(headers)
}

/// First pass: statistics for the wanted columns.
pub fn scan(
    path: &Path,
    headers: &[String],
    names: &[String],
    cancel: &crate::task::CancelToken,
) -> Result<(usize, Vec<ColumnStats>), JobError> {
    let indices = indices(headers, names)?;
    let mut stats: Vec<ColumnStats> = names
        .iter()
        .map(|_| ColumnStats {
            all_integer: true,
            ..ColumnStats::default()
        })
        .collect();
    let mut rows = 0;
    for_each_record(path, headers, cancel, |row, record| {
        rows = row;
        for (s, &i) in stats.iter_mut().zip(&indices) {
            let cell = record.get(i).unwrap_or("").trim();
            if is_missing(cell) {
                s.missing += 1;
                s.first_missing.get_or_insert(row);
                continue;
            }
            match cell.parse::<f64>() {
                Ok(v) if !(v as f32).is_finite() => {
                    return Err(JobError::new(
                        ErrorCode::NonFiniteValue,
                        format!(
                            "row {row}, column \"{}\": {cell} is not a finite number \
                             within ±3.4e38",
                            headers[i]
                        ),
                    ))
                }
                Ok(v) => {
                    s.numeric += 1;
                    s.all_integer &= v.fract() == 0.0;
                }
                Err(_) => {
                    s.text += 1;
                    s.first_text.get_or_insert_with(|| (row, cell.to_owned()));
                }
            }
            if s.distinct.len() <= MAX_LEVELS {
                s.distinct.insert(cell.to_owned());
            }
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
                format!("row {row}, column \"{name}\": \"{value}\" is not a number"),
            ))
        }
        _ => Ok(ColumnKind::Categorical),
    }
}

/// Second pass: typed columns, in the order of `kinds`.
pub fn load(
    path: &Path,
    headers: &[String],
    kinds: &[(String, ColumnKind)],
    cancel: &crate::task::CancelToken,
) -> Result<Table, JobError> {
    let names: Vec<String> = kinds.iter().map(|(n, _)| n.clone()).collect();
    let indices = indices(headers, &names)?;
    let mut builders: Vec<Builder> = kinds
        .iter()
        .map(|(_, kind)| match kind {
            ColumnKind::Numeric => Builder::Numeric(Vec::new()),
            ColumnKind::Categorical => Builder::Categorical(Vec::new(), HashMap::new()),
        })
        .collect();
    let mut rows = 0;
    for_each_record(path, headers, cancel, |row, record| {
        rows = row;
        for ((builder, &i), name) in builders.iter_mut().zip(&indices).zip(&names) {
            let cell = record.get(i).unwrap_or("").trim();
            builder.push(row, name, cell)?;
        }
        Ok(())
    })?;
    let columns = builders
        .into_iter()
        .zip(names)
        .map(|(b, name)| Column {
            name,
            data: b.finish(),
        })
        .collect();
    Ok(Table {
        rows,
        headers: headers.to_vec(),
        columns,
    })
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
    let mut target_builder = match target.1 {
        ColumnKind::Numeric => Builder::Numeric(Vec::new()),
        ColumnKind::Categorical => Builder::Categorical(Vec::new(), HashMap::new()),
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
fn parse_number(row: usize, name: &str, cell: &str) -> Result<f32, JobError> {
    match cell.parse::<f64>() {
        Ok(v) if (v as f32).is_finite() => Ok(v as f32),
        Ok(_) => Err(JobError::new(
            ErrorCode::NonFiniteValue,
            format!("row {row}, column \"{name}\": {cell} is not a finite number within ±3.4e38"),
        )),
        Err(_) => Err(JobError::new(
            ErrorCode::InvalidNumber,
            format!("row {row}, column \"{name}\": \"{cell}\" is not a number"),
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
                            "column \"{name}\" has more than {MAX_LEVELS} distinct values; \
                             leave it out with the `features` param"
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

fn indices(headers: &[String], names: &[String]) -> Result<Vec<usize>, JobError> {
    names
        .iter()
        .map(|n| {
            headers.iter().position(|h| h == n).ok_or_else(|| {
                JobError::new(
                    ErrorCode::UnknownColumn,
                    format!(
                        "column \"{n}\" is not in the file (its columns are: {})",
                        preview(headers)
                    ),
                )
            })
        })
        .collect()
}

fn reader(path: &Path) -> Result<csv::Reader<File>, JobError> {
    let file = File::open(path).map_err(|e| JobError::storage(format!("opening input: {e}")))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file))
}

/// Calls `f` with each data row (numbered from 1) until the end of the file.
fn for_each_record(
    path: &Path,
    headers: &[String],
    cancel: &crate::task::CancelToken,
    mut f: impl FnMut(usize, &csv::StringRecord) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let mut reader = reader(path)?;
    let mut record = csv::StringRecord::new();
    let mut row = 0;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                row += 1;
                // Checking every row would cost more than the parse; every
                // 64k rows keeps cancellation well under a second.
                if row % 65_536 == 0 {
                    cancel.check()?;
                }
                if record.as_slice().contains('\0') {
                    return Err(JobError::new(
                        ErrorCode::NotCsv,
                        format!("row {row} contains a NUL byte: the file is not CSV text"),
                    ));
                }
                f(row, &record)?;
            }
            Err(e) => return Err(csv_error(e, headers)),
        }
    }
}

fn csv_error(e: csv::Error, headers: &[String]) -> JobError {
    let row = |pos: Option<&csv::Position>| {
        pos.map(|p| format!("row {}", p.line().saturating_sub(1)))
            .unwrap_or_else(|| "a row".into())
    };
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, len, .. } => JobError::new(
            ErrorCode::RaggedRow,
            format!(
                "{} has {len} fields but the header has {}",
                row(pos.as_ref()),
                headers.len()
            ),
        ),
        csv::ErrorKind::Utf8 { pos, .. } => JobError::new(
            ErrorCode::NotCsv,
            format!("{} is not valid UTF-8 text", row(pos.as_ref())),
        ),
        csv::ErrorKind::Io(io) => JobError::storage(format!("reading input: {io}")),
        _ => JobError::new(ErrorCode::NotCsv, format!("the file is not valid CSV: {e}")),
    }
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
    let mut shown: Vec<&str> = values.iter().take(8).map(String::as_str).collect();
    if values.len() > 8 {
        shown.push("…");
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
        scan(f.path(), &headers, &headers, &CancelToken::default())
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
    fn load_builds_sorted_levels_and_marks_missing() {
        let f = file(b"x,color\n1,red\n,blue\n3,\n");
        let headers = read_headers(f.path()).unwrap();
        let kinds = vec![
            ("color".to_owned(), ColumnKind::Categorical),
            ("x".to_owned(), ColumnKind::Numeric),
        ];
        let table = load(f.path(), &headers, &kinds, &CancelToken::default()).unwrap();
        assert_eq!(table.rows, 3);
        assert_eq!(
            table.columns[0].data,
            ColumnData::Categorical {
                codes: vec![1, 0, MISSING_CODE],
                levels: vec!["blue".into(), "red".into()],
            }
        );
        match &table.columns[1].data {
            ColumnData::Numeric(v) => assert!(v[0] == 1.0 && v[1].is_nan() && v[2] == 3.0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_column_lists_the_real_ones() {
        let f = file(b"a,b\n1,2\n");
        let headers = read_headers(f.path()).unwrap();
        let err = scan(f.path(), &headers, &["c".into()], &CancelToken::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownColumn);
        assert!(err.message.contains("a, b"), "{}", err.message);
    }
}
