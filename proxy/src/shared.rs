//! What the master creates before it forks and every worker inherits: the configuration,
//! the IPC names, the segment pool and the proxy's stats region. Master and worker both
//! use it; it uses neither.

use common::config::ProxyConfig;
use common::pool::Pool;
use common::stats::StatsRegion;
use common::Names;

pub struct Shared {
    pub cfg: ProxyConfig,
    pub names: Names,
    pub pool: Pool,
    pub stats: StatsRegion,
}
