//! Where the local cluster's endpoints are, for the commands that drive it from outside
//! (`bench`, `seed`, drills): the write and read URLs and each query DB, from its state file.

use xshell::Shell;

use crate::cluster::topology::{Target, Topology};
use crate::cluster::Layout;

/// Where the local cluster (`cargo xtask up`) listens: from `.cluster/state.json` when there
/// is one, else the default ports.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    pub write_url: String,
    pub read_url: String,
    /// Every query DB by its service name, reached directly (not through PgBouncer).
    pub query_dbs: Vec<(String, String)>,
}

impl LocalCluster {
    pub fn discover(sh: &Shell) -> LocalCluster {
        LocalCluster::of(&Layout::new(sh).topology_or_default())
    }

    pub fn of(topo: &Topology) -> LocalCluster {
        LocalCluster {
            write_url: format!("http://127.0.0.1:{}", topo.ports.write),
            read_url: format!("http://127.0.0.1:{}", topo.ports.read),
            query_dbs: topo
                .query_db_names()
                .into_iter()
                .map(|name| {
                    let url = topo.query_db_url(&name, Target::Local);
                    (name, url)
                })
                .collect(),
        }
    }
}
