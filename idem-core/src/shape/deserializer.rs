//! The tracing deserializer: records each request of a type's `Deserialize` at its place in
//! the trace, and answers with placeholders.

use super::*;

/// The tracer, positioned at one node.
pub(super) struct At<'t> {
    pub(super) trace: &'t mut Trace,
    pub(super) id: Id,
}

impl<'t> At<'t> {
    pub(super) fn leaf<'de, V: Visitor<'de>>(self, leaf: Leaf, visitor: V) -> R<V::Value> {
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

    pub(super) fn any<'de, V: Visitor<'de>>(self, visitor: V) -> R<V::Value> {
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
    pub(super) fn fixed<'de, V: Visitor<'de>>(self, ask: Ask, visitor: V) -> R<V::Value> {
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

    pub(super) fn named<'de, V: Visitor<'de>>(self, sig: Sig, ask: Ask, visitor: V) -> R<V::Value> {
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

pub(super) fn sig(form: u8, name: &'static str, names: &'static [&'static str], len: usize) -> Sig {
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
pub(super) struct Elements<'t> {
    pub(super) trace: &'t mut Trace,
    pub(super) elements: Vec<Id>,
    pub(super) next: usize,
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
pub(super) struct Entry<'t> {
    pub(super) trace: &'t mut Trace,
    pub(super) key: Id,
    pub(super) value: Id,
    pub(super) left: usize,
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
pub(super) struct Empty;

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
pub(super) struct Variant<'t> {
    pub(super) trace: &'t mut Trace,
    pub(super) id: Id,
    pub(super) index: usize,
    pub(super) name: &'static str,
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
