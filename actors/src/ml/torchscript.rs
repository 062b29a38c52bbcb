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
    let file = std::fs::File::open(path)
        .map_err(|e| JobError::storage(format!("reading the model: {e}")))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        invalid(format!(
            "not a TorchScript module (save it with torch.jit.save): the file is not a zip \
             archive ({e})"
        ))
    })?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "not a TorchScript module: the archive has {} entries",
            archive.len()
        )));
    }
    let mut read = 0u64;
    let mut code = String::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| {
            invalid(format!(
                "not a TorchScript module: entry {index} is unreadable ({e})"
            ))
        })?;
        let name = String::from_utf8_lossy(entry.name_raw()).into_owned();
        // libtorch compiles every `.py` under the archive's `code/` folder.
        if !(name.contains("code/") && name.ends_with(".py")) {
            continue;
        }
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{CModule, Device, Kind, Tensor};

    fn traced(f: impl Fn(&Tensor) -> Tensor, dir: &Path) -> std::path::PathBuf {
        let module = CModule::create_by_tracing(
            "M",
            "forward",
            &[Tensor::zeros([1, 4], (Kind::Float, Device::Cpu))],
            &mut |x| vec![f(&x[0])],
        )
        .unwrap();
        let path = dir.join("m.pt");
        module.save(&path).unwrap();
        path
    }

    #[test]
    fn a_module_that_reads_files_is_refused_and_one_that_computes_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let fine = traced(|x| x.relu() * 2.0, dir.path());
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
        );
        let err = check(&thief).unwrap_err();
        assert_eq!(err.code, ErrorCode::ModelInvalid);
        assert!(err.message.contains("aten::from_file"), "{}", err.message);

        let junk = dir.path().join("junk.pt");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert_eq!(check(&junk).unwrap_err().code, ErrorCode::ModelInvalid);
    }
}
