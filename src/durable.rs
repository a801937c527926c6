//! Files that are whole or absent: temp file, fsync, rename, and an fsync of
//! the directory so that the rename itself survives a crash.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error and the file it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Tags an I/O error with its path: `.map_err(at(path))`.
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_path_buf(),
        source,
    }
}

/// Temp file, fsync, rename: the file is whole or absent. The caller fsyncs
/// the directory (once for a group of files) with [`sync_dir`].
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// [`write_atomically`] for a file written piece by piece: `fill` writes
/// the temp file (a failure leaves the old file in place).
pub fn write_atomically_with<T>(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<T>,
) -> Result<T, FileError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(at(&tmp))?;
    let filled = fill(&mut file).map_err(at(&tmp))?;
    file.sync_all().map_err(at(&tmp))?;
    fs::rename(&tmp, path).map_err(at(path))?;
    Ok(filled)
}

/// Makes the directory's entries (new, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("ipstats-durable-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        write_atomically(&path, b"one").expect("first");
        write_atomically(&path, b"two").expect("second");
        sync_dir(&dir).expect("sync");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert!(!path.with_extension("tmp").exists());
        let missing = dir.join("no/such/dir/f");
        let err = write_atomically(&missing, b"x").expect_err("no parent");
        assert!(err.to_string().contains("no/such/dir/f.tmp"), "{err}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
