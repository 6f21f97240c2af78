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

// ---------------------------------------------------------------------------------------
// Tracing

/// Gives up (UNCHECKED) past these: a type with more nodes than this, a pass that nests
/// deeper (a recursive type that hides its recursion from serde), more passes, or this many
/// passes in a row that learnt nothing.
const MAX_NODES: usize = 20_000;
const MAX_DEPTH: usize = 128;
const MAX_PASSES: usize = 5_000;
const MAX_IDLE_PASSES: usize = 32;

type Id = usize;

/// A primitive. Its discriminant is part of every stored shape (as is [`Form`]'s and the
/// tags in [`Trace::describe`]): add at the end, never reorder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leaf {
    Bool,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    F32,
    F64,
    Char,
    Str,
    Bytes,
    Unit,
}

/// How a variant's content is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    /// Not visited yet.
    Unknown,
    /// Its `Deserialize` refused the variant's name.
    Refused,
    Unit,
    Newtype,
    Tuple,
    Struct,
}

/// What a node of the type is read as.
#[derive(Debug)]
enum Kind {
    /// Not visited yet.
    Unknown,
    Leaf(Leaf),
    /// `deserialize_any`: what lies below is not known.
    Any,
    /// The named container this many levels up (a recursive type).
    Rec(usize),
    Option(Id),
    Seq(Id),
    Map(Id, Id),
    Tuple(Vec<Id>),
    Struct(&'static [&'static str], Vec<Id>),
    Enum {
        variants: &'static [&'static str],
        /// Per variant: how it is read, and the node of its content.
        slots: Vec<(Form, Id)>,
        /// Per variant: how many passes chose it (incomplete variants take turns).
        tries: Vec<u32>,
    },
}

/// What a deserializer method asks for, before children are made.
#[derive(Clone, Copy)]
enum Ask {
    Leaf(Leaf),
    Any,
    Rec(usize),
    Option,
    Seq,
    Map,
    Tuple(usize),
    Struct(&'static [&'static str]),
    Enum(&'static [&'static str]),
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// A pass got a value out of this node.
    ok: bool,
    /// ... without going through a recursion: a finite value, the way out of one.
    plain: bool,
    /// The placeholder this leaf is fed (advanced when one is refused).
    placeholder: usize,
}

/// A named container on the way down, to notice recursion.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Sig {
    form: u8,
    name: &'static str,
    names: &'static [&'static str],
    len: usize,
}

struct Trace {
    nodes: Vec<Node>,
    /// The named containers on the way down, and their nodes.
    stack: Vec<(Sig, Id)>,
    depth: usize,
    /// Inside a recursion: making a value of the enclosing container again, as small as
    /// can be (no optional content, finite variants only, no further recursion).
    minimal: bool,
    /// How many recursions this pass went through (to tell finite values).
    jumps: u64,
    /// The leaf (or "any") that gave the last value of the pass, if nothing was asked
    /// after it: when the pass then fails, the value was refused after it was read (a
    /// `String` parsed afterwards), so the next pass tries its next placeholder.
    fresh: Option<Id>,
    human_readable: bool,
    /// This pass learnt something.
    progress: bool,
    /// Tracing cannot succeed (the type asked two different things at one place, or it is
    /// too big).
    broken: bool,
}

/// The tracer's error: the message does not matter, only that the pass stopped.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tracing stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

type R<T> = Result<T, Stop>;

impl Trace {
    /// The canonical description of `T`'s shape, or `None` if it cannot be traced.
    fn run<T: DeserializeOwned>(human_readable: bool) -> Option<Vec<u8>> {
        let mut trace = Trace {
            nodes: vec![Node::new()],
            stack: Vec::new(),
            depth: 0,
            minimal: false,
            jumps: 0,
            fresh: None,
            human_readable,
            progress: false,
            broken: false,
        };
        let mut idle = 0;
        for _ in 0..MAX_PASSES {
            trace.progress = false;
            trace.stack.clear();
            trace.depth = 0;
            trace.minimal = false;
            // A pass may well fail (a placeholder refused, recursion met): what it learnt
            // is kept, and the next pass goes elsewhere.
            let failed = T::deserialize(At {
                trace: &mut trace,
                id: 0,
            })
            .is_err();
            if trace.broken {
                return None;
            }
            if let Some(id) = trace.fresh.take()
                && failed
                && !trace.progress
            {
                trace.next_placeholder(id);
            }
            if trace.complete(0) {
                let mut description = Vec::new();
                trace.describe(0, &mut description);
                return Some(description);
            }
            idle = if trace.progress { 0 } else { idle + 1 };
            if idle > MAX_IDLE_PASSES {
                return None;
            }
        }
        None
    }

    fn alloc(&mut self) -> R<Id> {
        if self.nodes.len() >= MAX_NODES {
            return Err(self.give_up());
        }
        self.nodes.push(Node::new());
        Ok(self.nodes.len() - 1)
    }

    fn allocs(&mut self, n: usize) -> R<Vec<Id>> {
        (0..n).map(|_| self.alloc()).collect()
    }

    fn give_up(&mut self) -> Stop {
        self.broken = true;
        Stop
    }

    /// Feeds leaf `id` its next placeholder from now on, if it has one.
    fn next_placeholder(&mut self, id: Id) {
        let count = match self.nodes[id].kind {
            Kind::Leaf(leaf) => placeholders(leaf),
            Kind::Any => ANYS,
            _ => 0,
        };
        if self.nodes[id].placeholder + 1 < count {
            self.nodes[id].placeholder += 1;
            self.progress = true;
        }
    }

    /// Records that node `id` is read as `ask` (the first time), or checks that it still is.
    fn enter(&mut self, id: Id, ask: Ask) -> R<()> {
        self.fresh = None;
        if let Kind::Unknown = self.nodes[id].kind {
            let kind = match ask {
                Ask::Leaf(leaf) => Kind::Leaf(leaf),
                Ask::Any => Kind::Any,
                Ask::Rec(up) => Kind::Rec(up),
                Ask::Option => Kind::Option(self.alloc()?),
                Ask::Seq => Kind::Seq(self.alloc()?),
                Ask::Map => Kind::Map(self.alloc()?, self.alloc()?),
                Ask::Tuple(len) => Kind::Tuple(self.allocs(len)?),
                Ask::Struct(fields) => Kind::Struct(fields, self.allocs(fields.len())?),
                Ask::Enum(variants) => Kind::Enum {
                    variants,
                    slots: self
                        .allocs(variants.len())?
                        .into_iter()
                        .map(|id| (Form::Unknown, id))
                        .collect(),
                    tries: vec![0; variants.len()],
                },
            };
            self.nodes[id].kind = kind;
            self.progress = true;
            return Ok(());
        }
        let same = match (&self.nodes[id].kind, ask) {
            (Kind::Leaf(a), Ask::Leaf(b)) => *a == b,
            (Kind::Any, Ask::Any) => true,
            (Kind::Rec(a), Ask::Rec(b)) => *a == b,
            (Kind::Option(_), Ask::Option)
            | (Kind::Seq(_), Ask::Seq)
            | (Kind::Map(..), Ask::Map) => true,
            (Kind::Tuple(children), Ask::Tuple(len)) => children.len() == len,
            (Kind::Struct(a, _), Ask::Struct(b)) => *a == b,
            (Kind::Enum { variants, .. }, Ask::Enum(b)) => *variants == b,
            _ => false,
        };
        // The same place read two ways (a `Deserialize` that depends on earlier values):
        // there is no one shape to record.
        if same { Ok(()) } else { Err(self.give_up()) }
    }

    /// Notes that node `id` gave a value, if it did (`jumps`: the count when it began).
    fn succeeded<T>(&mut self, id: Id, jumps: u64, result: R<T>) -> R<T> {
        if result.is_ok() {
            let plain = self.jumps == jumps;
            let node = &mut self.nodes[id];
            if !node.ok || (plain && !node.plain) {
                node.ok = true;
                node.plain |= plain;
                self.progress = true;
            }
        }
        result
    }

    /// Enters a named container; if it is already on the way down (a recursive type),
    /// records the back-reference and returns the node and stack level of the first one.
    fn push(&mut self, id: Id, sig: Sig) -> R<Option<(Id, usize)>> {
        self.fresh = None;
        if let Some(at) = self.stack.iter().rposition(|(s, _)| *s == sig) {
            self.enter(id, Ask::Rec(self.stack.len() - at))?;
            if self.minimal {
                // One recursion at a time: a minimal value that needs another is no way
                // out.
                return Err(Stop);
            }
            return Ok(Some((self.stack[at].1, at)));
        }
        self.stack.push((sig, id));
        Ok(None)
    }

    /// Makes the value of a recursive reference at `id`: a minimal value of the enclosing
    /// container, read at that container's own nodes (`read`) with the stack it had there,
    /// so the pass goes on to the fields after it.
    fn recurse<T>(
        &mut self,
        id: Id,
        (ancestor, at): (Id, usize),
        read: impl FnOnce(&mut Trace, Id) -> R<T>,
    ) -> R<T> {
        let jumps = self.jumps;
        self.jumps += 1;
        let deeper = self.stack.split_off(at);
        self.minimal = true;
        let result = read(self, ancestor);
        self.minimal = false;
        self.stack.truncate(at);
        self.stack.extend(deeper);
        self.succeeded(id, jumps, result)
    }

    fn down(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.give_up());
        }
        Ok(())
    }

    /// Whether a value is worth asking of this node: not traced yet, or a value came out
    /// of it before. (A node that only ever failed — an empty enum, a recursion with no
    /// way out — is left out where the container allows: `None`, an empty sequence; and
    /// so is everything optional while making a minimal value.)
    fn worth(&self, id: Id) -> bool {
        !self.minimal && (!self.complete(id) || self.nodes[id].ok)
    }

    fn complete(&self, id: Id) -> bool {
        match &self.nodes[id].kind {
            Kind::Unknown => false,
            Kind::Leaf(_) | Kind::Any | Kind::Rec(_) => true,
            Kind::Option(c) | Kind::Seq(c) => self.complete(*c),
            Kind::Map(k, v) => self.complete(*k) && self.complete(*v),
            Kind::Tuple(children) | Kind::Struct(_, children) => {
                children.iter().all(|c| self.complete(*c))
            }
            Kind::Enum { slots, .. } => slots.iter().all(|&(form, c)| match form {
                Form::Unknown => false,
                Form::Refused => true,
                _ => self.complete(c),
            }),
        }
    }

    /// The variant this pass takes: the incomplete one tried least, else one that gave a
    /// value before.
    fn choose(&mut self, id: Id) -> R<usize> {
        let Kind::Enum { slots, tries, .. } = &self.nodes[id].kind else {
            return Err(self.give_up());
        };
        if self.minimal {
            // A variant known to give a value without recursion, or none.
            return (0..slots.len())
                .find(|&i| self.nodes[slots[i].1].plain)
                .ok_or(Stop);
        }
        let incomplete = (0..slots.len())
            .filter(|&i| match slots[i].0 {
                Form::Unknown => true,
                Form::Refused => false,
                _ => !self.complete(slots[i].1),
            })
            .min_by_key(|&i| tries[i]);
        let index = incomplete
            .or_else(|| (0..slots.len()).find(|&i| self.nodes[slots[i].1].ok))
            .unwrap_or(0);
        if let Kind::Enum { tries, .. } = &mut self.nodes[id].kind
            && let Some(t) = tries.get_mut(index)
        {
            *t += 1;
        }
        Ok(index)
    }

    fn set_form(&mut self, id: Id, index: usize, form: Form) -> R<Id> {
        let Kind::Enum { slots, .. } = &mut self.nodes[id].kind else {
            return Err(self.give_up());
        };
        let slot = &mut slots[index];
        let child = slot.1;
        if slot.0 == Form::Unknown {
            slot.0 = form;
            self.progress = true;
        } else if slot.0 != form {
            return Err(self.give_up());
        }
        Ok(child)
    }

    fn children(&self, id: Id) -> Vec<Id> {
        match &self.nodes[id].kind {
            Kind::Tuple(children) | Kind::Struct(_, children) => children.clone(),
            _ => Vec::new(),
        }
    }

    /// The canonical bytes the shape digests.
    fn describe(&self, id: Id, out: &mut Vec<u8>) {
        fn name(out: &mut Vec<u8>, name: &str) {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend(name.as_bytes());
        }
        fn len(out: &mut Vec<u8>, len: usize) {
            out.extend((len as u32).to_le_bytes());
        }
        match &self.nodes[id].kind {
            Kind::Unknown => out.push(0),
            Kind::Leaf(leaf) => out.extend([1, *leaf as u8]),
            Kind::Any => out.push(2),
            Kind::Rec(up) => {
                out.push(3);
                len(out, *up);
            }
            Kind::Option(c) => {
                out.push(4);
                self.describe(*c, out);
            }
            Kind::Seq(c) => {
                out.push(5);
                self.describe(*c, out);
            }
            Kind::Map(k, v) => {
                out.push(6);
                self.describe(*k, out);
                self.describe(*v, out);
            }
            Kind::Tuple(children) => {
                out.push(7);
                len(out, children.len());
                for c in children {
                    self.describe(*c, out);
                }
            }
            Kind::Struct(fields, children) => {
                out.push(8);
                len(out, children.len());
                for (field, c) in fields.iter().zip(children) {
                    name(out, field);
                    self.describe(*c, out);
                }
            }
            Kind::Enum {
                variants, slots, ..
            } => {
                out.push(9);
                len(out, slots.len());
                for (variant, &(form, c)) in variants.iter().zip(slots) {
                    name(out, variant);
                    out.push(form as u8);
                    if !matches!(form, Form::Refused | Form::Unit) {
                        self.describe(c, out);
                    }
                }
            }
        }
    }
}

impl Node {
    fn new() -> Self {
        Node {
            kind: Kind::Unknown,
            ok: false,
            plain: false,
            placeholder: 0,
        }
    }
}

// Placeholders: values tried in turn where a type's `Deserialize` refuses the previous one
// (NonZero integers, strings parsed as dates, UUIDs, URLs, addresses; fixed-size bytes).
const BOOLS: &[bool] = &[false, true];
const UNSIGNED: &[u8] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 42, 64, 100, 127, 255,
];
const SIGNED: &[i8] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 42, 64, 100, 127, -1,
];
const FLOATS: &[f32] = &[0.0, 1.0, 0.5, -1.0];
const CHARS: &[char] = &['a', '0', ' '];
const STRS: &[&str] = &[
    "",
    "a",
    "0",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00",
    "1970-01-01",
    "00:00:00",
    "00000000-0000-0000-0000-000000000000",
    "http://localhost/",
    "127.0.0.1",
    "127.0.0.1:80",
    "::1",
    "1s",
    "0.0",
    "false",
    "00000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
];
const ZEROS: [u8; 65] = [0; 65];
const BYTE_LENS: &[usize] = &[0, 1, 2, 4, 8, 12, 16, 20, 24, 32, 33, 48, 64, 65];
/// `deserialize_any`: unit, "", 0, false, an empty sequence, an empty map.
const ANYS: usize = 6;

fn placeholders(leaf: Leaf) -> usize {
    match leaf {
        Leaf::Bool => BOOLS.len(),
        Leaf::I8 | Leaf::I16 | Leaf::I32 | Leaf::I64 | Leaf::I128 => SIGNED.len(),
        Leaf::U8 | Leaf::U16 | Leaf::U32 | Leaf::U64 | Leaf::U128 => UNSIGNED.len(),
        Leaf::F32 | Leaf::F64 => FLOATS.len(),
        Leaf::Char => CHARS.len(),
        Leaf::Str => STRS.len(),
        Leaf::Bytes => BYTE_LENS.len(),
        Leaf::Unit => 1,
    }
}

fn feed<'de, V: Visitor<'de>>(leaf: Leaf, i: usize, visitor: V) -> R<V::Value> {
    let (s, u) = (SIGNED[i % SIGNED.len()], UNSIGNED[i % UNSIGNED.len()]);
    match leaf {
        Leaf::Bool => visitor.visit_bool(BOOLS[i % BOOLS.len()]),
        Leaf::I8 => visitor.visit_i8(s),
        Leaf::I16 => visitor.visit_i16(s.into()),
        Leaf::I32 => visitor.visit_i32(s.into()),
        Leaf::I64 => visitor.visit_i64(s.into()),
        Leaf::I128 => visitor.visit_i128(s.into()),
        Leaf::U8 => visitor.visit_u8(u),
        Leaf::U16 => visitor.visit_u16(u.into()),
        Leaf::U32 => visitor.visit_u32(u.into()),
        Leaf::U64 => visitor.visit_u64(u.into()),
        Leaf::U128 => visitor.visit_u128(u.into()),
        Leaf::F32 => visitor.visit_f32(FLOATS[i % FLOATS.len()]),
        Leaf::F64 => visitor.visit_f64(FLOATS[i % FLOATS.len()].into()),
        Leaf::Char => visitor.visit_char(CHARS[i % CHARS.len()]),
        Leaf::Str => visitor.visit_str(STRS[i % STRS.len()]),
        Leaf::Bytes => visitor.visit_bytes(&ZEROS[..BYTE_LENS[i % BYTE_LENS.len()]]),
        Leaf::Unit => visitor.visit_unit(),
    }
}

/// The tracer, positioned at one node.
struct At<'t> {
    trace: &'t mut Trace,
    id: Id,
}

impl<'t> At<'t> {
    fn leaf<'de, V: Visitor<'de>>(self, leaf: Leaf, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        trace.enter(id, Ask::Leaf(leaf))?;
        let result = feed(leaf, trace.nodes[id].placeholder, visitor);
        match result {
            Ok(_) => trace.fresh = Some(id),
            Err(_) => trace.next_placeholder(id),
        }
        let jumps = trace.jumps;
        trace.succeeded(id, jumps, result)
    }

    fn any<'de, V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        trace.enter(id, Ask::Any)?;
        let i = trace.nodes[id].placeholder;
        let result = match i {
            0 => visitor.visit_unit(),
            1 => visitor.visit_str(""),
            2 => visitor.visit_u64(0),
            3 => visitor.visit_bool(false),
            4 => visitor.visit_seq(Empty),
            _ => visitor.visit_map(Empty),
        };
        match result {
            Ok(_) => trace.fresh = Some(id),
            Err(_) => trace.next_placeholder(id),
        }
        let jumps = trace.jumps;
        trace.succeeded(id, jumps, result)
    }

    /// A tuple, tuple struct or struct: its elements in order.
    fn fixed<'de, V: Visitor<'de>>(self, ask: Ask, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        let jumps = trace.jumps;
        trace.enter(id, ask)?;
        trace.down()?;
        let elements = trace.children(id);
        let result = visitor.visit_seq(Elements {
            trace: &mut *trace,
            elements,
            next: 0,
        });
        trace.depth -= 1;
        trace.succeeded(id, jumps, result)
    }

    fn named<'de, V: Visitor<'de>>(self, sig: Sig, ask: Ask, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        if let Some(first) = trace.push(id, sig)? {
            return trace.recurse(id, first, |trace, id| {
                At { trace, id }.named(sig, ask, visitor)
            });
        }
        let result = At {
            trace: &mut *trace,
            id,
        }
        .fixed(ask, visitor);
        trace.stack.pop();
        result
    }
}

fn sig(form: u8, name: &'static str, names: &'static [&'static str], len: usize) -> Sig {
    Sig {
        form,
        name,
        names,
        len,
    }
}

macro_rules! leaves {
    ($($method:ident => $leaf:ident),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
            self.leaf(Leaf::$leaf, visitor)
        })*
    };
}

impl<'de, 't> Deserializer<'de> for At<'t> {
    type Error = Stop;

    leaves! {
        deserialize_bool => Bool,
        deserialize_i8 => I8,
        deserialize_i16 => I16,
        deserialize_i32 => I32,
        deserialize_i64 => I64,
        deserialize_i128 => I128,
        deserialize_u8 => U8,
        deserialize_u16 => U16,
        deserialize_u32 => U32,
        deserialize_u64 => U64,
        deserialize_u128 => U128,
        deserialize_f32 => F32,
        deserialize_f64 => F64,
        deserialize_char => Char,
        deserialize_str => Str,
        deserialize_string => Str,
        deserialize_identifier => Str,
        deserialize_bytes => Bytes,
        deserialize_byte_buf => Bytes,
        deserialize_unit => Unit,
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.any(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        self.any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> R<V::Value> {
        self.leaf(Leaf::Unit, visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        trace.enter(id, Ask::Option)?;
        let Kind::Option(inner) = trace.nodes[id].kind else {
            return Err(trace.give_up());
        };
        let jumps = trace.jumps;
        trace.down()?;
        let result = if trace.worth(inner) {
            visitor.visit_some(At {
                trace: &mut *trace,
                id: inner,
            })
        } else {
            visitor.visit_none()
        };
        trace.depth -= 1;
        trace.succeeded(id, jumps, result)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> R<V::Value> {
        // A newtype is its content: wrapping a value in one (or unwrapping it) keeps the
        // encoding, so it keeps the shape.
        let (trace, id) = (self.trace, self.id);
        if let Some(first) = trace.push(id, sig(1, name, &[], 1))? {
            return trace.recurse(id, first, |trace, id| {
                At { trace, id }.deserialize_newtype_struct(name, visitor)
            });
        }
        let jumps = trace.jumps;
        trace.down()?;
        let result = visitor.visit_newtype_struct(At {
            trace: &mut *trace,
            id,
        });
        trace.depth -= 1;
        trace.stack.pop();
        trace.succeeded(id, jumps, result)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        trace.enter(id, Ask::Seq)?;
        let Kind::Seq(element) = trace.nodes[id].kind else {
            return Err(trace.give_up());
        };
        let jumps = trace.jumps;
        trace.down()?;
        let elements = if trace.worth(element) {
            vec![element]
        } else {
            Vec::new()
        };
        let result = visitor.visit_seq(Elements {
            trace: &mut *trace,
            elements,
            next: 0,
        });
        trace.depth -= 1;
        trace.succeeded(id, jumps, result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> R<V::Value> {
        self.fixed(Ask::Tuple(len), visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> R<V::Value> {
        self.named(sig(2, name, &[], len), Ask::Tuple(len), visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        trace.enter(id, Ask::Map)?;
        let Kind::Map(key, value) = trace.nodes[id].kind else {
            return Err(trace.give_up());
        };
        let jumps = trace.jumps;
        trace.down()?;
        let entry = trace.worth(key) && trace.worth(value);
        let result = visitor.visit_map(Entry {
            trace: &mut *trace,
            key,
            value,
            left: usize::from(entry),
        });
        trace.depth -= 1;
        trace.succeeded(id, jumps, result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        self.named(sig(3, name, fields, 0), Ask::Struct(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        let (trace, id) = (self.trace, self.id);
        if let Some(first) = trace.push(id, sig(4, name, variants, 0))? {
            return trace.recurse(id, first, |trace, id| {
                At { trace, id }.deserialize_enum(name, variants, visitor)
            });
        }
        let jumps = trace.jumps;
        let result = (|| {
            trace.enter(id, Ask::Enum(variants))?;
            if variants.is_empty() {
                // No variant, no value.
                return Err(Stop);
            }
            trace.down()?;
            let index = trace.choose(id)?;
            let result = visitor.visit_enum(Variant {
                trace: &mut *trace,
                id,
                index,
                name: variants[index],
            });
            trace.depth -= 1;
            result
        })();
        trace.stack.pop();
        trace.succeeded(id, jumps, result)
    }

    fn is_human_readable(&self) -> bool {
        self.trace.human_readable
    }
}

/// Gives the listed nodes as a sequence's elements.
struct Elements<'t> {
    trace: &'t mut Trace,
    elements: Vec<Id>,
    next: usize,
}

impl<'de, 't> SeqAccess<'de> for Elements<'t> {
    type Error = Stop;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> R<Option<S::Value>> {
        let Some(&id) = self.elements.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(At {
            trace: &mut *self.trace,
            id,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.elements.len() - self.next)
    }
}

/// A map of `left` (0 or 1) entries.
struct Entry<'t> {
    trace: &'t mut Trace,
    key: Id,
    value: Id,
    left: usize,
}

impl<'de, 't> MapAccess<'de> for Entry<'t> {
    type Error = Stop;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> R<Option<S::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(At {
            trace: &mut *self.trace,
            id: self.key,
        })
        .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> R<S::Value> {
        seed.deserialize(At {
            trace: &mut *self.trace,
            id: self.value,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An empty sequence or map (for `deserialize_any`).
struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = Stop;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, _: S) -> R<Option<S::Value>> {
        Ok(None)
    }
}

impl<'de> MapAccess<'de> for Empty {
    type Error = Stop;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, _: S) -> R<Option<S::Value>> {
        Ok(None)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, _: S) -> R<S::Value> {
        Err(Stop)
    }
}

/// The variant a pass takes, by name.
struct Variant<'t> {
    trace: &'t mut Trace,
    id: Id,
    index: usize,
    name: &'static str,
}

impl<'de, 't> EnumAccess<'de> for Variant<'t> {
    type Error = Stop;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> R<(S::Value, Self)> {
        let name: de::value::StrDeserializer<'_, Stop> = self.name.into_deserializer();
        match seed.deserialize(name) {
            Ok(value) => Ok((value, self)),
            Err(e) => {
                self.trace.set_form(self.id, self.index, Form::Refused)?;
                Err(e)
            }
        }
    }
}

impl<'de, 't> VariantAccess<'de> for Variant<'t> {
    type Error = Stop;

    fn unit_variant(self) -> R<()> {
        let content = self.trace.set_form(self.id, self.index, Form::Unit)?;
        self.trace.enter(content, Ask::Leaf(Leaf::Unit))?;
        let jumps = self.trace.jumps;
        self.trace.succeeded(content, jumps, Ok(()))
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> R<S::Value> {
        let content = self.trace.set_form(self.id, self.index, Form::Newtype)?;
        seed.deserialize(At {
            trace: self.trace,
            id: content,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> R<V::Value> {
        let content = self.trace.set_form(self.id, self.index, Form::Tuple)?;
        At {
            trace: self.trace,
            id: content,
        }
        .fixed(Ask::Tuple(len), visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> R<V::Value> {
        let content = self.trace.set_form(self.id, self.index, Form::Struct)?;
        At {
            trace: self.trace,
            id: content,
        }
        .fixed(Ask::Struct(fields), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::{BTreeMap, HashMap};

    fn bin<T: DeserializeOwned>() -> Shape {
        Shape::of::<T>(false)
    }

    fn traced<T: DeserializeOwned>() -> Shape {
        let shape = bin::<T>();
        assert!(shape.is_checked(), "{}", std::any::type_name::<T>());
        shape
    }

    #[test]
    fn primitives_differ() {
        let shapes = [
            traced::<i64>(),
            traced::<u64>(),
            traced::<u8>(),
            traced::<i32>(),
            traced::<bool>(),
            traced::<String>(),
            traced::<char>(),
            traced::<f64>(),
            traced::<()>(),
            traced::<Option<u64>>(),
            traced::<Vec<u64>>(),
            traced::<(u64, u64)>(),
            traced::<[u64; 3]>(),
            traced::<BTreeMap<String, u64>>(),
        ];
        for (i, a) in shapes.iter().enumerate() {
            for b in &shapes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(traced::<String>(), traced::<Box<str>>());
        assert_eq!(
            traced::<HashMap<String, u64>>(),
            traced::<BTreeMap<String, u64>>()
        );
    }

    mod v1 {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub(super) struct Transfer {
            pub(super) _debit: u64,
            pub(super) _credit: u64,
        }
    }

    mod v2 {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub(super) struct Transfer {
            pub(super) _credit: u64,
            pub(super) _debit: u64,
        }

        /// v1's type, renamed and moved.
        #[derive(Deserialize)]
        pub(super) struct Movement {
            pub(super) _debit: u64,
            pub(super) _credit: u64,
        }
    }

    #[test]
    fn field_order_and_names_count_type_names_do_not() {
        assert_ne!(traced::<v1::Transfer>(), traced::<v2::Transfer>());
        assert_eq!(traced::<v1::Transfer>(), traced::<v2::Movement>());
        assert_ne!(traced::<v1::Transfer>(), traced::<(u64, u64)>());
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Narrow {
        A(u8),
        B { cents: u16 },
        C,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Wide {
        A(u8),
        B { cents: u32 },
        C,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Reordered {
        B { cents: u16 },
        A(u8),
        C,
    }

    #[test]
    fn every_variant_is_traced() {
        assert_ne!(traced::<Narrow>(), traced::<Wide>());
        assert_ne!(traced::<Narrow>(), traced::<Reordered>());
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum List {
        Cons(u64, Box<List>),
        Nil,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum SignedList {
        Cons(i64, Box<SignedList>),
        Nil,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        label: String,
        children: Vec<Tree>,
        parent: Option<Box<Tree>>,
        kind: Kind,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Kind {
        Leaf,
        Forest(BTreeMap<String, Tree>),
        Pair(Box<Tree>, Box<Tree>),
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Wrapped(Box<Option<Wrapped>>);

    /// Uninhabited: no finite value exists.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Endless {
        next: Box<Endless>,
    }

    #[derive(Deserialize)]
    enum Never {}

    /// Recursive without a named container on the way: serde cannot tell it recurses.
    struct Hidden;

    impl<'de> Deserialize<'de> for Hidden {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Hidden;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("nested sequences")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Hidden, A::Error> {
                    while seq.next_element::<Hidden>()?.is_some() {}
                    Ok(Hidden)
                }
            }
            d.deserialize_seq(V)
        }
    }

    #[test]
    fn recursive_types_terminate() {
        assert_eq!(bin::<Hidden>(), Shape::UNCHECKED);
        assert_ne!(traced::<List>(), traced::<SignedList>());
        traced::<Tree>();
        traced::<Kind>();
        traced::<Wrapped>();
        traced::<Endless>();
        traced::<Never>();
        assert_ne!(traced::<Tree>(), traced::<Kind>());
    }

    /// Accepts only one string, as a parser of some private format would.
    struct Magic;

    impl<'de> Deserialize<'de> for Magic {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            if s == "magic" {
                Ok(Magic)
            } else {
                Err(de::Error::custom("not magic"))
            }
        }
    }

    struct Panics;

    impl<'de> Deserialize<'de> for Panics {
        fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("a Deserialize that panics (expected by the test)")
        }
    }

    /// Exactly 32 bytes, read as bytes.
    #[allow(dead_code)]
    struct Digest32([u8; 32]);

    impl<'de> Deserialize<'de> for Digest32 {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Digest32;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("32 bytes")
                }
                fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Digest32, E> {
                    v.try_into().map(Digest32).map_err(E::custom)
                }
            }
            d.deserialize_bytes(V)
        }
    }

    /// A string parsed on the way in, the way date, UUID and URL types read themselves.
    struct Parsed<const KIND: u8>;

    impl<'de, const KIND: u8> Deserialize<'de> for Parsed<KIND> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            let b = s.as_bytes();
            let ok = match KIND {
                // 1970-01-01T00:00:00Z
                b'd' => b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
                // 8-4-4-4-12 hex digits
                b'u' => {
                    b.len() == 36
                        && s.split('-').map(str::len).eq([8, 4, 4, 4, 12])
                        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
                }
                // scheme://host/
                _ => s
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.contains('/')),
            };
            if ok {
                Ok(Parsed)
            } else {
                Err(de::Error::custom("unparsable"))
            }
        }
    }

    /// Checked as a whole after its fields are read.
    #[derive(Deserialize)]
    #[serde(try_from = "(u32, u32)")]
    #[allow(dead_code)]
    struct Range(u32, u32);

    impl TryFrom<(u32, u32)> for Range {
        type Error = &'static str;

        fn try_from((start, end): (u32, u32)) -> Result<Self, Self::Error> {
            if start < end {
                Ok(Range(start, end))
            } else {
                Err("empty range")
            }
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Picky {
        id: std::num::NonZeroU32,
        at: std::net::SocketAddr,
        digest: Digest32,
        when: Parsed<b'd'>,
        uuid: Parsed<b'u'>,
        url: Parsed<b'l'>,
        range: Range,
        then: Narrow,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct PickyWide {
        id: std::num::NonZeroU32,
        at: std::net::SocketAddr,
        digest: Digest32,
        when: Parsed<b'd'>,
        uuid: Parsed<b'u'>,
        url: Parsed<b'l'>,
        range: Range,
        then: Wide,
    }

    #[test]
    fn placeholders_get_past_picky_types() {
        // Every field after the picky ones is still traced: the last differs.
        assert_ne!(traced::<Picky>(), traced::<PickyWide>());
        assert_ne!(
            Shape::of::<Picky>(true),
            Shape::of::<PickyWide>(true),
            "human-readable"
        );
    }

    #[test]
    fn what_cannot_be_traced_is_unchecked_not_an_error() {
        // It refuses every placeholder, but what it asks for is known: a string.
        assert_eq!(traced::<Magic>(), traced::<String>());
        assert_eq!(traced::<(u8, Magic)>(), traced::<(u8, String)>());
        // What comes after it is not.
        assert_eq!(bin::<(Magic, u8)>(), Shape::UNCHECKED);
        assert_eq!(bin::<Vec<Panics>>(), Shape::UNCHECKED);
        assert!(!Shape::UNCHECKED.is_checked());
        assert_eq!(format!("{:?}", Shape::UNCHECKED), "Shape(unchecked)");
    }

    #[test]
    fn human_readability_is_respected() {
        // std's addresses are strings to human-readable formats, enums of byte arrays to
        // the others.
        assert_eq!(
            Shape::of::<std::net::IpAddr>(true),
            Shape::of::<String>(true)
        );
        assert_ne!(
            Shape::of::<std::net::IpAddr>(false),
            Shape::of::<String>(false)
        );
        assert!(Shape::of::<std::net::IpAddr>(false).is_checked());
    }

    #[cfg(feature = "json")]
    #[test]
    fn deserialize_any_is_traced_as_any() {
        let value = Shape::of::<serde_json::Value>(true);
        assert!(value.is_checked());
        assert_ne!(value, Shape::of::<String>(true));
    }

    #[test]
    fn a_cell_serves_its_first_type_and_falls_back_for_others() {
        static CELL: ShapeCell = ShapeCell::new();
        assert_eq!(CELL.get::<i64>(false), bin::<i64>());
        assert_eq!(CELL.get::<u64>(false), bin::<u64>());
        assert_eq!(CELL.get::<i64>(false), bin::<i64>());
        assert_eq!(CELL.get::<i64>(true), Shape::of::<i64>(true));
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Big {
        a: [u64; 32],
        b: Vec<(String, Option<Narrow>)>,
        c: Tree,
    }

    #[test]
    fn shapes_are_stable_and_round_trip() {
        assert_eq!(Shape::trace::<Big>(false), Shape::trace::<Big>(false));
        let shape = traced::<Big>();
        assert_eq!(Shape::from_bytes(shape.to_bytes()), shape);
    }
}
