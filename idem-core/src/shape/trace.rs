//! The trace of a type: what its `Deserialize` asked for, pass after pass, until every
//! variant was visited; and its canonical description.

use super::*;

/// Gives up (UNCHECKED) past these: a type with more nodes than this, a pass that nests
/// deeper (a recursive type that hides its recursion from serde), more passes, or this many
/// passes in a row that learnt nothing.
pub(super) const MAX_NODES: usize = 20_000;
pub(super) const MAX_DEPTH: usize = 128;
pub(super) const MAX_PASSES: usize = 5_000;
pub(super) const MAX_IDLE_PASSES: usize = 32;

pub(super) type Id = usize;

/// A primitive. Its discriminant is part of every stored shape (as is [`Form`]'s and the
/// tags in [`Trace::describe`]): add at the end, never reorder.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Leaf {
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
pub(super) enum Form {
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
pub(super) enum Kind {
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
pub(super) enum Ask {
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
pub(super) struct Node {
    pub(super) kind: Kind,
    /// A pass got a value out of this node.
    pub(super) ok: bool,
    /// ... without going through a recursion: a finite value, the way out of one.
    pub(super) plain: bool,
    /// The placeholder this leaf is fed (advanced when one is refused).
    pub(super) placeholder: usize,
}

/// A named container on the way down, to notice recursion.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Sig {
    pub(super) form: u8,
    pub(super) name: &'static str,
    pub(super) names: &'static [&'static str],
    pub(super) len: usize,
}

pub(super) struct Trace {
    pub(super) nodes: Vec<Node>,
    /// The named containers on the way down, and their nodes.
    pub(super) stack: Vec<(Sig, Id)>,
    pub(super) depth: usize,
    /// Inside a recursion: making a value of the enclosing container again, as small as
    /// can be (no optional content, finite variants only, no further recursion).
    pub(super) minimal: bool,
    /// How many recursions this pass went through (to tell finite values).
    pub(super) jumps: u64,
    /// The leaf (or "any") that gave the last value of the pass, if nothing was asked
    /// after it: when the pass then fails, the value was refused after it was read (a
    /// `String` parsed afterwards), so the next pass tries its next placeholder.
    pub(super) fresh: Option<Id>,
    pub(super) human_readable: bool,
    /// This pass learnt something.
    pub(super) progress: bool,
    /// Tracing cannot succeed (the type asked two different things at one place, or it is
    /// too big).
    pub(super) broken: bool,
}

/// The tracer's error: the message does not matter, only that the pass stopped.
#[derive(Debug)]
pub(super) struct Stop;

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

pub(super) type R<T> = Result<T, Stop>;

impl Trace {
    /// The canonical description of `T`'s shape, or `None` if it cannot be traced.
    pub(super) fn run<T: DeserializeOwned>(human_readable: bool) -> Option<Vec<u8>> {
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

    pub(super) fn alloc(&mut self) -> R<Id> {
        if self.nodes.len() >= MAX_NODES {
            return Err(self.give_up());
        }
        self.nodes.push(Node::new());
        Ok(self.nodes.len() - 1)
    }

    pub(super) fn allocs(&mut self, n: usize) -> R<Vec<Id>> {
        (0..n).map(|_| self.alloc()).collect()
    }

    pub(super) fn give_up(&mut self) -> Stop {
        self.broken = true;
        Stop
    }

    /// Feeds leaf `id` its next placeholder from now on, if it has one.
    pub(super) fn next_placeholder(&mut self, id: Id) {
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
    pub(super) fn enter(&mut self, id: Id, ask: Ask) -> R<()> {
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
    pub(super) fn succeeded<T>(&mut self, id: Id, jumps: u64, result: R<T>) -> R<T> {
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
    pub(super) fn push(&mut self, id: Id, sig: Sig) -> R<Option<(Id, usize)>> {
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
    pub(super) fn recurse<T>(
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

    pub(super) fn down(&mut self) -> R<()> {
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
    pub(super) fn worth(&self, id: Id) -> bool {
        !self.minimal && (!self.complete(id) || self.nodes[id].ok)
    }

    pub(super) fn complete(&self, id: Id) -> bool {
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
    pub(super) fn choose(&mut self, id: Id) -> R<usize> {
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

    pub(super) fn set_form(&mut self, id: Id, index: usize, form: Form) -> R<Id> {
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

    pub(super) fn children(&self, id: Id) -> Vec<Id> {
        match &self.nodes[id].kind {
            Kind::Tuple(children) | Kind::Struct(_, children) => children.clone(),
            _ => Vec::new(),
        }
    }

    /// The canonical bytes the shape digests.
    pub(super) fn describe(&self, id: Id, out: &mut Vec<u8>) {
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
    pub(super) fn new() -> Self {
        Node {
            kind: Kind::Unknown,
            ok: false,
            plain: false,
            placeholder: 0,
        }
    }
}
