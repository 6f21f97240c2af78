//! The connection a store talks through: one server, or a Redis Cluster.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// A shared, cheaply cloned connection. Both kinds multiplex one connection per server and
/// reconnect by themselves; the cluster one also routes each command to the node that owns
/// its key's slot (every script names exactly one key) and follows `MOVED`/`ASK`.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server (or a primary behind a proxy or Sentinel-managed address).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(cluster_command(c, cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Sends `cmd` on the cluster; if the client gave up on an `ASK` redirect (the key's slot is
/// being migrated and the key is already on the importing node), sends it once more to that
/// node right behind `ASKING`, in one pipeline.
///
/// Why: the client follows `ASK` by sending `ASKING` and then the command as two separate
/// requests on the node's multiplexed connection, so another request in flight can slip
/// between them and take the one-command `ASKING` flag; under concurrent calls that repeats
/// until its retries run out (seen in `tests/migration.rs`: a renew failed mid-migration
/// with `Ask`). A pipeline is written in one piece, so nothing comes between the two.
async fn cluster_command(conn: &mut ClusterConnection, cmd: &Cmd) -> RedisResult<Value> {
    let err = match conn.req_packed_command(cmd).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::Ask) => err,
        reply => return reply,
    };
    let Some((host, port)) = err
        .redirect_node()
        .and_then(|(addr, _slot)| addr.rsplit_once(':'))
        .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
    else {
        return Err(err);
    };
    let mut asking = redis::pipe();
    asking.cmd("ASKING").add_command(cmd.clone());
    let mut replies = conn
        .route_pipeline(
            asking,
            1,
            1,
            SingleNodeRoutingInfo::ByAddress { host, port },
        )
        .await?;
    replies.pop().ok_or_else(|| {
        RedisError::from((ErrorKind::Client, "no reply to the command after ASKING"))
    })
}
