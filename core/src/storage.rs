//! Secure storage: a few named blobs, each written atomically.
//!
//! On platforms this is the keychain or the app's private storage; [`FileStorage`] is the
//! default for tests, desktop and the examples. The device core encrypts everything it stores,
//! so storage only has to be durable and atomic.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A storage operation failed. Messages name the operation, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The blob name is not `[a-z0-9._-]{1,64}`.
    #[error("invalid storage name")]
    InvalidName,
    /// The platform storage failed.
    #[error("{0}")]
    Io(String),
}

/// Named blobs, each read and written whole. Implementations must make `write` atomic: a reader
/// (or a restart after a crash) sees the old value or the new one, never a mix.
pub trait SecureStorage: Send + Sync {
    /// The blob called `name`, or `None` if there is none.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Replaces the blob called `name`, atomically.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Deletes the blob called `name`; deleting a missing blob is not an error.
    fn delete(&self, name: &str) -> Result<(), StorageError>;
}

/// [`SecureStorage`] in a directory: one file per blob, written to a temporary file, synced, and
/// renamed over the old one (then the directory is synced), so a crash leaves the old file or the
/// new one.
#[derive(Debug, Clone)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    /// Storage in `dir`, created (mode 0700 on unix) if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, name: &str) -> Result<PathBuf, StorageError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'));
        if valid {
            Ok(self.dir.join(name))
        } else {
            Err(StorageError::InvalidName)
        }
    }
}

impl SecureStorage for FileStorage {
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match fs::read(self.path(name)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Io(format!("read failed: {}", e.kind()))),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        write_atomically(&self.path(name)?, bytes)
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        match fs::remove_file(self.path(name)?) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::Io(format!("delete failed: {}", e.kind()))),
        }
    }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(dir)
        .map_err(|e| StorageError::Io(format!("create dir failed: {}", e.kind())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| StorageError::Io(format!("set permissions failed: {}", e.kind())))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a uniquely named temporary file in the same directory
/// (mode 0600 on unix), fsync, rename over `path`, fsync of the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let io =
        |what: &str, e: std::io::Error| StorageError::Io(format!("{what} failed: {}", e.kind()));
    let dir = path
        .parent()
        .ok_or_else(|| StorageError::Io("path has no parent".into()))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(StorageError::InvalidName)?;
    let tmp = dir.join(format!(".{file_name}.{}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| io("create", e))?;
        file.write_all(bytes).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
        #[cfg(unix)]
        if let Ok(d) = fs::File::open(dir) {
            // Persist the rename; failure here only weakens durability, not atomicity.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("st")).unwrap();
        assert_eq!(s.read("state.bin").unwrap(), None);
        s.write("state.bin", b"one").unwrap();
        s.write("state.bin", b"two").unwrap();
        assert_eq!(s.read("state.bin").unwrap().as_deref(), Some(&b"two"[..]));
        s.delete("state.bin").unwrap();
        s.delete("state.bin").unwrap();
        assert_eq!(s.read("state.bin").unwrap(), None);
        for bad in ["", "../x", "a/b", ".hidden", "UPPER", &"x".repeat(65)] {
            assert_eq!(s.write(bad, b"x"), Err(StorageError::InvalidName), "{bad}");
        }
    }

    #[test]
    fn a_leftover_temporary_file_does_not_disturb_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path()).unwrap();
        s.write("state.bin", b"committed").unwrap();
        // A crash after writing the temporary file but before the rename leaves this behind.
        std::fs::write(dir.path().join(".state.bin.123.tmp"), b"half-writ").unwrap();
        assert_eq!(
            s.read("state.bin").unwrap().as_deref(),
            Some(&b"committed"[..])
        );
        s.write("state.bin", b"next").unwrap();
        assert_eq!(s.read("state.bin").unwrap().as_deref(), Some(&b"next"[..]));
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("st")).unwrap();
        s.write("state.bin", b"x").unwrap();
        let mode = std::fs::metadata(dir.path().join("st/state.bin"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
