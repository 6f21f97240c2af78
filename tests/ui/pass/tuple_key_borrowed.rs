//! `key = (a, b)`: a composite key borrowed from a non-`Copy` struct that is used after.
use idem::{MemoryStore, idempotent};
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[derive(Serialize)]
struct Order {
    account: String,
    order_id: String,
    lines: Vec<String>,
}

#[idempotent(key = (order.account, order.order_id), store = store)]
async fn place(store: &MemoryStore, order: Order) -> Result<usize, idem::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    // The struct is still whole: the key only borrowed it.
    let Order {
        account,
        order_id,
        lines,
    } = order;
    Ok(account.len() + order_id.len() + lines.len())
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        let order = || Order {
            account: "acct".into(),
            order_id: "o-1".into(),
            lines: vec!["a".into()],
        };
        assert_eq!(place(&store, order()).await.unwrap(), 8);
        assert_eq!(place(&store, order()).await.unwrap(), 8);
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    });
}
