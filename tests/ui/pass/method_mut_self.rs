//! `&mut self` methods whose body mutates `self`; the key comes from `self`, the store from
//! an argument or from another field of `self`.
use idem::{MemoryStore, idempotent};

struct Counter {
    id: String,
    count: u64,
}

impl Counter {
    #[idempotent(key = self.id, store = store)]
    async fn bump(&mut self, store: &MemoryStore) -> Result<u64, idem::Error> {
        self.count += 1;
        Ok(self.count)
    }
}

struct Owned {
    store: MemoryStore,
    count: u64,
}

impl Owned {
    #[idempotent(key = id, store = self.store)]
    async fn bump(&mut self, id: u64) -> Result<u64, idem::Error> {
        self.count += 1;
        Ok(self.count)
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        let mut counter = Counter {
            id: "c-1".into(),
            count: 0,
        };
        assert_eq!(counter.bump(&store).await.unwrap(), 1);
        assert_eq!(counter.bump(&store).await.unwrap(), 1);
        assert_eq!(counter.count, 1);

        let mut owned = Owned {
            store: MemoryStore::new(),
            count: 0,
        };
        assert_eq!(owned.bump(9).await.unwrap(), 1);
        assert_eq!(owned.bump(9).await.unwrap(), 1);
        assert_eq!(owned.count, 1);
    });
}
