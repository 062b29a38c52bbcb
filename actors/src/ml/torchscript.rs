//! A user's TorchScript file, read before libtorch loads it.
//!
//! A TorchScript module is a zip whose `code/` entries hold the module's
//! program as TorchScript source, which libtorch compiles when it loads the
//! file. Nearly every operator only computes on tensors, but
//! `aten::from_file` maps any file the service can read into a tensor, and
//! the model's output could carry that file out in its predictions. So the
//! source is read first, and a module that names such an operator is
//! refused as invalid, before any of it runs.
//!
//! This closes the one door TorchScript opens onto the host; it does not
//! make an untrusted model harmless. A model can still loop until its time
//! limit (its worker is then abandoned and replaced) or ask for more memory
//! than the machine has (libtorch's error fails the task; the kernel's OOM
//! killer ends the process, and crash containment stops a second try).

use std::io::Read;
use std::path::Path;

use crate::error::{quote, ErrorCode, JobError};

/// Operators that reach outside the process, by the name TorchScript
/// source calls them (`torch.from_file`, `ops.aten.from_file`). Matched
/// as whole identifiers, however the call is spelled: a module with an
/// attribute of the same name is refused too, which is rare and says why.
const DENIED: &[(&str, &str)] = &[
    ("from_file", "reads a file on the server"),
    ("save", "writes a file on the server"),
];

/// Most source the check reads; a real module has far less.
const MAX_CODE_BYTES: u64 = 256 << 20;
/// Most entries a TorchScript archive may have.
const MAX_ENTRIES: usize = 100_000;

/// Refuses a file that is not a TorchScript archive, or whose code calls
/// a denied operator.
pub fn check(path: &Path) -> Result<(), JobError> {
    let invalid = |m: String| JobError::new(ErrorCode::ModelInvalid, m);
    let mut file = std::fs::File::open(path)
        .map_err(|e| JobError::storage(format!("reading the model: {e}")))?;
    // libtorch reads a file with `PTMF` at bytes 4..8 as a flatbuffer
    // module, never as a zip, and a zip reader finds an archive appended
    // to anything: only a file that is a zip from its first byte is read
    // the same way by both.
    let mut head = [0u8; 8];
    let whole = file.read_exact(&mut head).is_ok();
    if !whole || &head[..4] != b"PK\x03\x04" || &head[4..] == b"PTMF" {
        return Err(invalid(
            "not a TorchScript module (save it with torch.jit.save): the file is not a zip \
             archive from its first byte"
                .into(),
        ));
    }
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        invalid(format!(
            "not a TorchScript module (save it with torch.jit.save): the file is not a zip \
             archive ({e})"
        ))
    })?;
    if archive.len() > MAX_ENTRIES || archive.offset() != 0 {
        return Err(invalid(format!(
            "not a TorchScript module: the archive has {} entries, or data before them",
            archive.len()
        )));
    }
    // libtorch finds entries by name ignoring case: two names that differ
    // only in case could show this check one entry and libtorch another.
    let mut names = std::collections::HashSet::new();
    for index in 0..archive.len() {
        let name = archive
            .name_for_index(index)
            .and_then(Result::ok)
            .map(|n| n.to_lowercase())
            .unwrap_or_default();
        if !names.insert(name.clone()) {
            return Err(invalid(format!(
                "not a TorchScript module: two entries are named {} (ignoring case)",
                quote(&crate::ml::archive::display_name(&name))
            )));
        }
    }
    let (mut code_entries, mut pickles) = (0, 0);
    let mut read = 0u64;
    let mut code = String::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| {
            invalid(format!(
                "not a TorchScript module: entry {index} is unreadable ({e})"
            ))
        })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let lower = name.to_lowercase();
        if lower.ends_with("/data.pkl") {
            pickles += 1;
        }
        // libtorch compiles `.py` entries under the archive's `code/`
        // folder, matching names in any case.
        if !(lower.contains("code/") && lower.ends_with(".py")) {
            continue;
        }
        code_entries += 1;
        code.clear();
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_CODE_BYTES - read + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                invalid(format!(
                    "not a TorchScript module: {name} is unreadable ({e})"
                ))
            })?;
        read += bytes.len() as u64;
        if read > MAX_CODE_BYTES {
            return Err(invalid(format!(
                "the module's code comes to more than {} MiB",
                MAX_CODE_BYTES >> 20
            )));
        }
        code.push_str(&String::from_utf8_lossy(&bytes));
        let identifiers = code.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        for word in identifiers {
            if let Some((op, what)) = DENIED.iter().find(|(op, _)| *op == word) {
                return Err(invalid(format!(
                    "the module calls aten::{op} (in {}), which {what}; mlq does not run models \
                     that reach outside their inputs",
                    quote(&crate::ml::archive::display_name(&name))
                )));
            }
        }
    }
    if code_entries == 0 || pickles == 0 {
        return Err(invalid(
            "not a TorchScript module (save it with torch.jit.save): the archive has no code \
             or no data.pkl"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{CModule, Device, Kind, Tensor};

    fn traced(f: impl Fn(&Tensor) -> Tensor, dir: &Path, name: &str) -> std::path::PathBuf {
        let module = CModule::create_by_tracing(
            "M",
            "forward",
            &[Tensor::zeros([1, 4], (Kind::Float, Device::Cpu))],
            &mut |x| vec![f(&x[0])],
        )
        .unwrap();
        let path = dir.join(name);
        module.save(&path).unwrap();
        path
    }

    #[test]
    fn a_module_that_reads_files_is_refused_and_one_that_computes_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let fine = traced(|x| x.relu() * 2.0, dir.path(), "fine.pt");
        check(&fine).unwrap();

        let secret = dir.path().join("secret.bin");
        std::fs::write(&secret, [7u8; 16]).unwrap();
        let secret_path = secret.display().to_string();
        let thief = traced(
            move |x| {
                let stolen = Tensor::from_file(&secret_path, false, 16, (Kind::Uint8, Device::Cpu))
                    .to_kind(Kind::Float)
                    .narrow(0, 0, 4);
                x + stolen
            },
            dir.path(),
            "thief.pt",
        );
        let err = check(&thief).unwrap_err();
        assert_eq!(err.code, ErrorCode::ModelInvalid);
        assert!(err.message.contains("aten::from_file"), "{}", err.message);

        let junk = dir.path().join("junk.pt");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert_eq!(check(&junk).unwrap_err().code, ErrorCode::ModelInvalid);

        // The thief's code under an upper-case folder, which libtorch
        // would still find: the check reads it too.
        let shouty = rename_entries(&thief, |n| n.replace("/code/", "/CODE/"));
        let err = check(&shouty).unwrap_err();
        assert!(err.message.contains("aten::from_file"), "{}", err.message);
        // Anything in front of the archive (a flatbuffer module, say) is
        // refused: libtorch would not read it as this zip.
        let mut prefixed = b"\0\0\0\0PTMF".to_vec();
        prefixed.extend(std::fs::read(&fine).unwrap());
        let prefixed_path = dir.path().join("prefixed.pt");
        std::fs::write(&prefixed_path, prefixed).unwrap();
        assert!(check(&prefixed_path)
            .unwrap_err()
            .message
            .contains("first byte"));
        // Two entries whose names differ only in case.
        let twins = rename_entries(&fine, |n| n.to_owned());
        let mut z = zip::ZipWriter::new_append(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&twins)
                .unwrap(),
        )
        .unwrap();
        let first_code = {
            let a = zip::ZipArchive::new(std::fs::File::open(&fine).unwrap()).unwrap();
            let upper = a
                .file_names()
                .filter_map(Result::ok)
                .find(|n| n.contains("/code/"))
                .unwrap()
                .to_uppercase();
            upper
        };
        z.start_file(first_code, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.finish().unwrap();
        assert!(check(&twins).unwrap_err().message.contains("ignoring case"));
    }

    /// A copy of a module's archive with each entry's name mapped.
    fn rename_entries(path: &Path, f: impl Fn(&str) -> String) -> std::path::PathBuf {
        let mut from = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
        let out = path.with_extension("renamed.pt");
        let mut to = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
        for i in 0..from.len() {
            let mut entry = from.by_index(i).unwrap();
            let name = f(&String::from_utf8_lossy(entry.name_raw()));
            to.start_file(name, zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::copy(&mut entry, &mut to).unwrap();
        }
        to.finish().unwrap();
        out
    }
}
