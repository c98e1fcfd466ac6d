//! openraft's storage conformance suite, run against fresh redb stores.

use dtc_store::{LogStore, StateMachineStore, StorageError, TypeConfig};
use openraft::StorageIOError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

/// Opens a fresh pair of stores in a new temporary directory; the `TempDir`
/// is the guard the suite keeps alive while it uses the stores.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, sm) = dtc_store::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance_suite_passes() {
    // The suite makes its own tokio runtimes, so this is a plain #[test].
    Suite::test_all(RedbStoreBuilder).unwrap();
}
