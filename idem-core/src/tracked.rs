//! An output that knows whether it was replayed.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::Deref;

/// The output of an `#[idempotent]` function that tells a fresh result from a replayed
/// one: to set HTTP's `Idempotent-Replayed: true`, to log or count replays.
///
/// Return `Result<Tracked<T>, E>` and wrap the body's value in [`Tracked::new`] (or
/// `.into()`); [`was_replayed`](Self::was_replayed) is `false` for the call that ran the
/// body and `true` for every call that got the recorded result back.
///
/// It is stored as `T` itself (serialization is transparent), so a function can switch
/// from `T` to `Tracked<T>` and keep its records. Deserializing a `Tracked` is what a
/// replay does, so a deserialized one says it was replayed: use it for outputs, not as a
/// general-purpose type.
///
/// ```
/// # extern crate idem_core as idem;
/// # use idem_core::MemoryStore;
/// use idem::Tracked;
///
/// // #[idempotent(key = req.id, store = store)]
/// // async fn charge(store: &MemoryStore, req: Charge) -> Result<Tracked<Receipt>, Error> {
/// //     Ok(Tracked::new(Receipt { .. }))
/// // }
/// let fresh = Tracked::new(7_u64);
/// assert!(!fresh.was_replayed());
/// assert_eq!(*fresh, 7);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Tracked<T> {
    value: T,
    replayed: bool,
}

impl<T> Tracked<T> {
    /// A result of the body that runs now (not replayed).
    pub fn new(value: T) -> Self {
        Tracked {
            value,
            replayed: false,
        }
    }

    /// `true` when this is a recorded result handed back instead of running the body.
    pub fn was_replayed(&self) -> bool {
        self.replayed
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Tracked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> From<T> for Tracked<T> {
    fn from(value: T) -> Self {
        Tracked::new(value)
    }
}

/// Compares the values only: a replay equals the result it replays.
impl<T: PartialEq> PartialEq for Tracked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T: Eq> Eq for Tracked<T> {}

impl<T: Serialize> Serialize for Tracked<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Tracked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(|value| Tracked {
            value,
            replayed: true,
        })
    }
}
