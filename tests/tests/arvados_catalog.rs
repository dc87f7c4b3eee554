//! The Arvados catalog against the test Arvados cluster (`cafs_tests::arvados`, itself checked against the
//! Arvados SDK and tools in `keep.rs`).

use std::sync::Arc;
use std::time::Duration;

use cafs::arvados::{Api, ApiConfig};
use cafs::catalog::{ArvadosCatalog, Catalog};
use cafs::store::{KeepConfig, KeepStore, Signatures};
use cafs_tests::arvados::{Cluster, ClusterOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

fn keep(cluster: &Cluster) -> Arc<KeepStore> {
    let cfg = KeepConfig {
        api_host: cluster.api_host(),
        api_token: cluster.token.clone(),
        insecure: true,
        retry_delay: Duration::from_millis(50),
        ..KeepConfig::default()
    };
    Arc::new(KeepStore::new(cfg, Arc::new(Signatures::in_memory())).unwrap())
}

fn catalog(cluster: &Cluster, project: &str) -> Arc<dyn Catalog> {
    let api = Api::new(ApiConfig {
        host: cluster.api_host(),
        token: cluster.token.clone(),
        insecure: true,
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    Arc::new(ArvadosCatalog::new(api, project.to_string(), keep(cluster)).unwrap())
}

#[test]
fn the_arvados_catalog_passes_the_catalog_checks() {
    // Without blob signing: the suite's collections name blocks that were never written.
    let cluster = Cluster::start(ClusterOptions { blob_signing: false, ..ClusterOptions::default() });
    let mut n = 0;
    rt().block_on(cafs::catalog::conformance::run_all(|| {
        n += 1;
        // Each check in a project of its own: a fresh, empty catalog, two handles as two nodes would have.
        let project = format!("zzzzz-j7d0g-{n:015}");
        let pair = (catalog(&cluster, &project), catalog(&cluster, &project));
        async move { pair }
    }));
}
