//! The checkpoint directory. For now it holds this instance's id, which
//! names the instance in ZooKeeper's owner znodes and survives restarts.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint directory {path}: {source} (--checkpoint-dir)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {found:?}, not an instance id; delete the file to get a new id")]
    BadInstanceId { path: PathBuf, found: String },
}

const INSTANCE_ID_FILE: &str = "instance-id";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// This instance's id, created on first use: `<hostname>-<random hex>`.
pub fn instance_id(dir: &Path) -> Result<String, CheckpointError> {
    let path = dir.join(INSTANCE_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            let valid = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            return if valid {
                Ok(id.to_string())
            } else {
                Err(CheckpointError::BadInstanceId {
                    found: text.chars().take(64).collect(),
                    path,
                })
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut random = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(io(Path::new("/dev/urandom")))?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ipstats".to_string());
    let id = format!(
        "{host}-{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    write_atomically(&path, id.as_bytes())?;
    Ok(id)
}

/// Temp file, fsync, rename, fsync the directory: the file is whole or absent.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("ipstats-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = instance_id(&dir).expect("created");
        assert_eq!(instance_id(&dir).expect("read back"), first);
        fs::write(dir.join(INSTANCE_ID_FILE), "bad id with spaces\n").expect("write");
        assert!(matches!(
            instance_id(&dir),
            Err(CheckpointError::BadInstanceId { .. })
        ));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
