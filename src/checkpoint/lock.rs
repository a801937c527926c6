//! One process per checkpoint directory: an exclusive `flock` on
//! `<dir>/lock`, held for the life of the process and released by the
//! kernel when it exits or is killed, so that a SIGKILLed run never blocks
//! its successor. The file holds the holder's pid, for the message a second
//! process prints.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::durable::{FileError, at};

const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "--checkpoint-dir {dir} is in use by another ipstats process (pid {pid}); stop it, \
         or give this one another --checkpoint-dir"
    )]
    Held { dir: PathBuf, pid: String },
    #[error("--checkpoint-dir {0}")]
    Io(#[from] FileError),
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Creates `dir` if needed and locks it for this process.
pub fn lock(dir: &Path) -> Result<DirLock, LockError> {
    fs::create_dir_all(dir).map_err(at(dir))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(at(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown".to_string(),
                pid => pid.chars().take(20).collect(),
            };
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        Err(TryLockError::Error(source)) => return Err(at(&path)(source).into()),
    }
    // Informational only: the lock is the flock, not the file's content.
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(at(&path))?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_released() {
        let dir = std::env::temp_dir().join(format!("ipstats-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let held = lock(&dir).expect("first lock");
        // flock locks belong to the open file: a second open, even in this
        // process, is refused as another process would be.
        let err = lock(&dir).expect_err("held").to_string();
        assert!(
            err.contains(&dir.display().to_string())
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        let again = lock(&dir).expect("released with its holder");
        drop(again);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
