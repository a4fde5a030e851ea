//! Object stores found by URL: local files always, S3 buckets built on first use
//! from the configured settings with the `AWS_*` environment filling any gaps.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use url::Url;

use crate::config::ObjectStoreConfig;

/// An [`ObjectStoreRegistry`] that creates S3 stores lazily, one per bucket.
#[derive(Debug)]
pub struct LazyObjectStoreRegistry {
    config: RwLock<ObjectStoreConfig>,
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl LazyObjectStoreRegistry {
    pub fn new(config: ObjectStoreConfig) -> Self {
        let mut stores: HashMap<String, Arc<dyn ObjectStore>> = HashMap::new();
        stores.insert("file://".to_string(), Arc::new(LocalFileSystem::new()));
        Self {
            config: RwLock::new(config),
            stores: RwLock::new(stores),
        }
    }

    /// Replaces the settings; stores built from the old settings are dropped.
    pub fn set_config(&self, config: ObjectStoreConfig) {
        let mut current = self.config.write().unwrap_or_else(|p| p.into_inner());
        if *current != config {
            *current = config;
            self.stores
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|key, _| key == "file://");
        }
    }

    fn build_s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let config = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(s3) = &config.s3 {
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &s3.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            if s3.allow_http {
                builder = builder.with_allow_http(true);
            }
        }
        let store = builder
            .build()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(store))
    }
}

fn url_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

impl ObjectStoreRegistry for LazyObjectStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url_key(url), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = url_key(url);
        if let Some(store) = self
            .stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(store));
        }
        match url.scheme() {
            "s3" | "s3a" => {
                let bucket = url.host_str().ok_or_else(|| {
                    DataFusionError::Plan(format!("object-store URL {url} names no bucket"))
                })?;
                let store = self.build_s3(bucket)?;
                self.stores
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Arc::clone(&store));
                Ok(store)
            }
            other => Err(DataFusionError::Plan(format!(
                "no object store for scheme '{other}' (supported: file, s3)"
            ))),
        }
    }
}
