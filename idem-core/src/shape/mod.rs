//! The shape of a recorded type, so that a record replays only into a type that reads its
//! bytes as the writer meant them.
//!
//! bincode and postcard decode any bytes of the right length into any type of a similar
//! layout: an `i64` record reads as a `u64`, a struct whose fields were swapped reads
//! swapped. So every record carries a [`Shape`]: a 64-bit digest of what the type's
//! `Deserialize` asks a deserializer for — primitive types, field names and their order,
//! variant names and their order, sequence, map, option and tuple structure — and not of
//! Rust paths or container names, so that renaming or moving a type keeps its records.
//!
//! It is found by *tracing*: `T::deserialize` runs against a deserializer that records each
//! request and answers with placeholder values, as many times as it takes to visit every
//! variant of every enum. Recursive types end in a back-reference to the enclosing
//! container. A type that still cannot be traced (its `Deserialize` refuses every
//! placeholder, panics, or asks something tracing cannot answer) gets [`Shape::UNCHECKED`].

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess,
    SeqAccess, VariantAccess, Visitor,
};
use sha2::{Digest, Sha256};
use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{LazyLock, OnceLock, PoisonError, RwLock};

mod deserializer;
mod placeholders;
#[cfg(test)]
mod tests;
mod trace;

use deserializer::*;
use placeholders::*;
use trace::*;

/// A digest of a type's serde structure (see the [module docs](self)).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape(u64);

impl Shape {
    /// The shape of a type that could not be traced: records of such types are only told
    /// apart from those of traced types, not from each other.
    pub const UNCHECKED: Shape = Shape(0);

    /// The shape of `T` as a codec that is (or is not) human-readable sees it (types may
    /// serialize differently for each), computed once per type and cached.
    pub fn of<T: DeserializeOwned>(human_readable: bool) -> Shape {
        static CACHE: LazyLock<RwLock<HashMap<(TypeId, bool), Shape>>> =
            LazyLock::new(Default::default);
        let key = (typeid::of::<T>(), human_readable);
        let cached = CACHE
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        if let Some(shape) = cached {
            return shape;
        }
        // Traced outside the lock: two threads may both trace a type the first time, and
        // agree, since tracing is deterministic.
        let shape = Shape::trace::<T>(human_readable);
        *CACHE
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(shape)
    }

    /// Traces `T` (uncached).
    fn trace<T: DeserializeOwned>(human_readable: bool) -> Shape {
        // A `Deserialize` that panics on a placeholder is a type we cannot trace, not a
        // reason to take the caller down.
        match catch_unwind(AssertUnwindSafe(|| Trace::run::<T>(human_readable))) {
            Ok(Some(description)) => Shape::digest(&description),
            Ok(None) | Err(_) => Shape::UNCHECKED,
        }
    }

    fn digest(description: &[u8]) -> Shape {
        let hash = Sha256::new()
            .chain_update(b"idem shape v1\0")
            .chain_update(description)
            .finalize();
        let bits = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"));
        // 0 is UNCHECKED.
        Shape(bits.max(1))
    }

    /// Whether the type was traced.
    pub fn is_checked(self) -> bool {
        self != Shape::UNCHECKED
    }

    /// The tag as stored.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }

    /// The tag from its stored bytes.
    pub fn from_bytes(bytes: [u8; 8]) -> Shape {
        Shape(u64::from_le_bytes(bytes))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_checked() {
            write!(f, "Shape({:016x})", self.0)
        } else {
            f.write_str("Shape(unchecked)")
        }
    }
}

/// A one-slot cache of a shape, for a `static` at the call site (the `#[idempotent]`
/// expansion declares one per function): after the first call, finding the shape costs an
/// atomic load and a comparison of type ids. Calls with another type than the first (a
/// generic function) fall back to the global cache of [`Shape::of`].
pub struct ShapeCell(OnceLock<(TypeId, bool, Shape)>);

impl ShapeCell {
    /// An empty cell.
    pub const fn new() -> Self {
        ShapeCell(OnceLock::new())
    }

    /// [`Shape::of::<T>(human_readable)`](Shape::of), cached in this cell.
    #[inline]
    pub fn get<T: DeserializeOwned>(&self, human_readable: bool) -> Shape {
        let id = typeid::of::<T>();
        match self.0.get() {
            Some(&(cached, hr, shape)) if cached == id && hr == human_readable => shape,
            Some(_) => Shape::of::<T>(human_readable),
            None => {
                let shape = Shape::of::<T>(human_readable);
                let _ = self.0.set((id, human_readable, shape));
                shape
            }
        }
    }
}

impl Default for ShapeCell {
    fn default() -> Self {
        ShapeCell::new()
    }
}
