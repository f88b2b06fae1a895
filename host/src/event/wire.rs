//! The CloudEvents JSON wire format (structured mode), parsed in one pass
//! without building a JSON tree: string attributes are borrowed from the
//! body where they need no unescaping, and `data` is kept as the raw JSON
//! text it arrived as, so it is neither parsed into values nor written out
//! again. Checking what the members mean is `Event::from_wire`'s job; this
//! module only records what each member was.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A member where a string is expected, and what it turned out to be.
pub(crate) enum Text<'a> {
    /// A string.
    Str(Cow<'a, str>),
    /// `null`.
    Null,
    /// Something else: "a number", "an object", …
    Wrong(&'static str),
}

impl<'a> Text<'a> {
    /// A string value, for attributes taken from elsewhere (binary mode).
    pub(crate) fn owned(s: String) -> Text<'a> {
        Text::Str(Cow::Owned(s))
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Text<'de>, E> {
        Ok(Text::Null)
    }

    fn visit_none<E>(self) -> Result<Text<'de>, E> {
        Ok(Text::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Text<'de>, E> {
        Ok(Text::Wrong("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Text<'de>, E> {
        Ok(Text::Wrong("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Text<'de>, E> {
        Ok(Text::Wrong("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Text<'de>, E> {
        Ok(Text::Wrong("a number"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Text::Wrong("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Text::Wrong("an object"))
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

/// The members of one CloudEvent object, as they arrived.
#[derive(Default)]
pub(crate) struct Wire<'a> {
    pub specversion: Option<Text<'a>>,
    pub id: Option<Text<'a>>,
    pub source: Option<Text<'a>>,
    pub type_: Option<Text<'a>>,
    pub subject: Option<Text<'a>>,
    pub time: Option<Text<'a>>,
    pub datacontenttype: Option<Text<'a>>,
    pub correlationid: Option<Text<'a>>,
    pub causationid: Option<Text<'a>>,
    pub data_base64: Option<Text<'a>>,
    pub data: Option<&'a RawValue>,
    /// Every other member: a CloudEvents extension attribute.
    pub extensions: Vec<(Cow<'a, str>, Value)>,
}

impl<'a> Wire<'a> {
    /// Where the string attribute `name` goes; `None` for `data` and for
    /// extension attributes.
    pub(crate) fn slot(&mut self, name: &str) -> Option<&mut Option<Text<'a>>> {
        Some(match name {
            "specversion" => &mut self.specversion,
            "id" => &mut self.id,
            "source" => &mut self.source,
            "type" => &mut self.type_,
            "subject" => &mut self.subject,
            "time" => &mut self.time,
            "datacontenttype" => &mut self.datacontenttype,
            "correlationid" => &mut self.correlationid,
            "causationid" => &mut self.causationid,
            "data_base64" => &mut self.data_base64,
            _ => return None,
        })
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvent: a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
        let mut w = Wire::default();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            let Text::Str(key) = key else {
                // JSON object keys are always strings.
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if &*key == "data" {
                w.data = Some(map.next_value::<&'de RawValue>()?);
                continue;
            }
            let Some(slot) = w.slot(&key) else {
                let value = map.next_value::<Value>()?;
                w.extensions.push((key, value));
                continue;
            };
            *slot = Some(map.next_value::<Text<'de>>()?);
        }
        Ok(w)
    }
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(WireVisitor)
    }
}

/// A batch: a JSON array of CloudEvents, turned into events as it is read
/// (one pass over the body). The first element that is not a valid event
/// stops the parse; `failed` then holds its index and the reason.
pub(crate) struct Batch<'f, F> {
    /// Builds an event from one element's members.
    pub build: F,
    /// Set when an element is refused: (index, reason).
    pub failed: &'f mut Option<(usize, super::EventError)>,
}

impl<'de, F> Visitor<'de> for Batch<'_, F>
where
    F: FnMut(Wire<'de>) -> Result<super::Event, super::EventError>,
{
    type Value = Vec<super::Event>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of CloudEvents")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(16));
        loop {
            let i = events.len();
            let wire = match seq.next_element::<Element<'de>>()? {
                Some(Element::Object(wire)) => wire,
                None => return Ok(events),
                Some(Element::Other) => {
                    *self.failed = Some((
                        i,
                        super::EventError::Json(
                            "a CloudEvent in structured mode must be a JSON object".into(),
                        ),
                    ));
                    return Err(serde::de::Error::custom("refused"));
                }
            };
            match (self.build)(wire) {
                Ok(event) => events.push(event),
                Err(reason) => {
                    *self.failed = Some((i, reason));
                    return Err(serde::de::Error::custom("refused"));
                }
            }
        }
    }
}

/// An element of a batch: a CloudEvent object, or anything else.
// Lives on the stack for one element; boxing the large variant would cost
// an allocation per event on the ingest path.
#[allow(clippy::large_enum_variant)]
enum Element<'a> {
    Object(Wire<'a>),
    Other,
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CloudEvent")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Element<'de>, A::Error> {
        WireVisitor.visit_map(map).map(Element::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Element::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Element<'de>, E> {
        Ok(Element::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Element<'de>, E> {
        Ok(Element::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Element<'de>, E> {
        Ok(Element::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Element<'de>, E> {
        Ok(Element::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Element<'de>, E> {
        Ok(Element::Other)
    }

    fn visit_unit<E>(self) -> Result<Element<'de>, E> {
        Ok(Element::Other)
    }
}

impl<'de> Deserialize<'de> for Element<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}
