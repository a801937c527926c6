//! This instance's id: its name in ZooKeeper's ephemeral owner znodes, kept
//! in `--checkpoint-dir/instance-id` so that a restarted process (same
//! directory) reclaims its own stale ownership at once, while another
//! instance's ownership is waited for.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::durable::{FileError, at, sync_dir, write_atomically};

const INSTANCE_ID_FILE: &str = "instance-id";

#[derive(Debug, thiserror::Error)]
pub enum InstanceIdError {
    #[error("instance id {0} (--checkpoint-dir)")]
    Io(#[from] FileError),
    #[error("{path} holds {found:?}, not an instance id; delete the file to get a new id")]
    Bad { path: PathBuf, found: String },
}

/// This instance's id, created on first use: `<hostname>-<random hex>`.
pub fn instance_id(dir: &Path) -> Result<String, InstanceIdError> {
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
                Err(InstanceIdError::Bad {
                    found: text.chars().take(64).collect(),
                    path,
                })
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(&path)(e).into()),
    }
    fs::create_dir_all(dir).map_err(at(dir))?;
    let mut random = [0u8; 8];
    let urandom = Path::new("/dev/urandom");
    fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(at(urandom))?;
    let host = crate::vocab::hostname();
    let id = format!(
        "{host}-{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    write_atomically(&path, id.as_bytes())?;
    sync_dir(dir)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_made_once_kept_and_a_garbled_one_refused() {
        let dir = std::env::temp_dir().join(format!("ipstats-instance-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let id = instance_id(&dir).expect("created");
        assert!(id.len() > 17 && id.contains('-'), "{id}");
        assert_eq!(instance_id(&dir).expect("read back"), id);
        fs::write(dir.join(INSTANCE_ID_FILE), "not/an id").expect("garble");
        let err = instance_id(&dir).expect_err("garbled").to_string();
        assert!(err.contains("not an instance id"), "{err}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
