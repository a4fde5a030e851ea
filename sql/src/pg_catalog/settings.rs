//! The Postgres settings a session has changed with `SET`, carried in the
//! session's DataFusion options so that `current_setting()` and `pg_settings`
//! report them. The coordinator's `Session` owns the values and mirrors every
//! change here; this extension only carries them to the catalog code.

use std::any::Any;
use std::collections::BTreeMap;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};

/// Settings changed in this session: lower-case name to value.
#[derive(Debug, Clone, Default)]
pub struct SessionSettings {
    values: BTreeMap<String, String>,
}

impl SessionSettings {
    /// The value the session set for `name` (any case), if it set one.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(&name.to_lowercase()).map(String::as_str)
    }

    /// Records a value; `None` returns the setting to its default.
    pub fn put(&mut self, name: &str, value: Option<&str>) {
        let key = name.to_lowercase();
        match value {
            Some(value) => {
                self.values.insert(key, value.to_string());
            }
            None => {
                self.values.remove(&key);
            }
        }
    }

    /// Every setting back to its default (`DISCARD ALL`, `RESET ALL`).
    pub fn clear(&mut self) {
        self.values.clear();
    }
}

impl ExtensionOptions for SessionSettings {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::error::Result<()> {
        self.put(key, Some(value));
        Ok(())
    }

    /// None: these are Postgres settings, listed by `pg_settings` under their own
    /// names rather than as DataFusion options.
    fn entries(&self) -> Vec<ConfigEntry> {
        Vec::new()
    }
}

impl ConfigExtension for SessionSettings {
    const PREFIX: &'static str = "flotilla_session";
}
