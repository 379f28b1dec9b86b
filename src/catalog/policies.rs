//! Policies in the catalog: sled tree `policies`, disk name -> JSON `Policy`.

use super::{encode, Catalog};
use crate::error::{Error, Result};
use crate::policy::Policy;

impl Catalog {
    pub fn policy(&self, disk: &str) -> Result<Option<Policy>> {
        self.disk(disk)?;
        match self.policies.get(disk)? {
            Some(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::BadMetadata(format!("policy of disk {disk}: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// Every disk that has a policy, with it.
    pub fn policies(&self) -> Result<Vec<(String, Policy)>> {
        self.policies
            .iter()
            .map(|item| {
                let (key, value) = item?;
                let disk = String::from_utf8_lossy(&key).into_owned();
                let policy = serde_json::from_slice(&value)
                    .map_err(|e| Error::BadMetadata(format!("policy of disk {disk}: {e}")))?;
                Ok((disk, policy))
            })
            .collect()
    }

    pub fn set_policy(&self, disk: &str, policy: &Policy) -> Result<()> {
        policy.validate()?;
        let _names = self.name_lock();
        self.disk(disk)?;
        self.policies.insert(disk, encode(policy)?)?;
        self.changed()
    }

    /// Removes a disk's policy; returns whether it had one.
    pub fn remove_policy(&self, disk: &str) -> Result<bool> {
        self.disk(disk)?;
        let had = self.policies.remove(disk)?.is_some();
        self.changed()?;
        Ok(had)
    }
}
