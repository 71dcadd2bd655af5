//! Operator-defined access policies: their shape, validation, topic templates, and storage.
//!
//! A [`Policy`] attaches to devices (all, by group, by type) and lists allow and deny
//! [`Rule`]s. A rule grants or denies publish, subscribe or both on topic filter templates
//! that may use `${device_id}`, `${type}`, `${group}` (one filter per group of the device) and
//! `${tag:KEY}`. A template whose variable has no value for a device (no type, no such tag, no
//! group) yields nothing for it, and a value that would change the filter's shape (contains
//! `/`, `+`, `#`, NUL, or is empty) is never substituted: the filter is dropped, so a tag value
//! cannot widen a grant. Evaluation is in [`crate::acl`].
//!
//! JSON shape:
//!
//! ```json
//! {"name": "sensors-read-config", "attach": ["group:sensors", "type:meter", "all"],
//!  "allow": [{"access": "subscribe", "topics": ["config/${group}/#"]}],
//!  "deny":  [{"access": "both", "topics": ["devices/${device_id}/debug/#"]}]}
//! ```

use std::fmt;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::acl::DeviceContext;
use crate::audit::Actor;
use crate::device::check_label;
use crate::filter::Filter;
use crate::fleet::{FleetEvent, read};
use crate::schema::{POLICIES, from_json, to_json};
use crate::{Fleet, FleetError};

/// Which actions a rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Publishing to matching topics.
    Publish,
    /// Subscribing with filters inside the matching topics.
    Subscribe,
    /// Both.
    Both,
}

/// One allow or deny rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Publish, subscribe or both.
    pub access: Access,
    /// Topic filter templates.
    pub topics: Vec<String>,
}

/// Which devices a policy applies to. Written `all`, `group:NAME` or `type:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Attach {
    /// Every device.
    All,
    /// Devices in this group.
    Group(String),
    /// Devices of this type.
    Type(String),
}

impl TryFrom<String> for Attach {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "all" {
            return Ok(Self::All);
        }
        let check = |what, v: &str| check_label(what, v).map_err(|e| e.to_string());
        if let Some(g) = s.strip_prefix("group:") {
            check("group", g)?;
            return Ok(Self::Group(g.to_owned()));
        }
        if let Some(t) = s.strip_prefix("type:") {
            check("type", t)?;
            return Ok(Self::Type(t.to_owned()));
        }
        Err(format!(
            "attachment {s:?} must be \"all\", \"group:NAME\" or \"type:NAME\""
        ))
    }
}

impl From<Attach> for String {
    fn from(a: Attach) -> Self {
        a.to_string()
    }
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Group(g) => write!(f, "group:{g}"),
            Self::Type(t) => write!(f, "type:{t}"),
        }
    }
}

/// An operator-defined access policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Unique name: 1–64 bytes of `A-Z a-z 0-9 _ - . :`.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Which devices it applies to (any match).
    pub attach: Vec<Attach>,
    /// What it allows.
    #[serde(default)]
    pub allow: Vec<Rule>,
    /// What it forbids; a deny from any applicable policy wins over every allow.
    #[serde(default)]
    pub deny: Vec<Rule>,
}

impl Policy {
    /// Check the name, attachments and every template.
    pub fn validate(&self) -> Result<(), FleetError> {
        check_label("policy name", &self.name)?;
        for a in &self.attach {
            match a {
                Attach::All => {}
                Attach::Group(g) => check_label("group", g)?,
                Attach::Type(t) => check_label("type", t)?,
            }
        }
        for rule in self.allow.iter().chain(&self.deny) {
            if rule.topics.is_empty() {
                return Err(FleetError::invalid("policy rule", "lists no topics"));
            }
            for t in &rule.topics {
                Template::parse(t).map_err(|e| FleetError::invalid("topic template", e))?;
            }
        }
        Ok(())
    }

    /// Whether it applies to the device.
    pub fn applies_to(&self, ctx: &DeviceContext) -> bool {
        self.attach.iter().any(|a| match a {
            Attach::All => true,
            Attach::Group(g) => ctx.groups.contains(g),
            Attach::Type(t) => ctx.device_type.as_ref() == Some(t),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    DeviceId,
    Group,
    Type,
    Tag(String),
}

/// A parsed topic filter template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template(Vec<Part>);

impl Template {
    /// Parse `${…}` variables; anything else is literal text (so `$SYS` stays literal).
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_owned()));
            }
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("{s:?}: unclosed ${{"))?;
            let var = &after[..end];
            parts.push(match var {
                "device_id" => Part::DeviceId,
                "group" => Part::Group,
                "type" => Part::Type,
                v => match v.strip_prefix("tag:") {
                    Some(k) => {
                        check_label("tag key", k).map_err(|e| e.to_string())?;
                        Part::Tag(k.to_owned())
                    }
                    None => {
                        return Err(format!(
                            "{s:?}: unknown variable ${{{var}}}; known are ${{device_id}}, \
                             ${{group}}, ${{type}}, ${{tag:KEY}}"
                        ));
                    }
                },
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let t = Self(parts);
        // The shape must be a valid filter whatever safe values are substituted.
        let probe = t.render(|_| Some("x"));
        match probe.as_deref().map(Filter::parse) {
            Some(Ok(_)) => Ok(t),
            _ => Err(format!("{s:?} is not a valid topic filter")),
        }
    }

    /// The filters this template yields for the device.
    pub(crate) fn expand(&self, ctx: &DeviceContext) -> Vec<String> {
        let value = |p: &Part, group: Option<&str>| -> Option<String> {
            let v = match p {
                Part::DeviceId => ctx.id.as_str(),
                Part::Group => group?,
                Part::Type => ctx.device_type.as_deref()?,
                Part::Tag(k) => ctx.tags.get(k)?.as_str(),
                Part::Text(_) => return None,
            };
            safe_value(v).then(|| v.to_owned())
        };
        let uses_group = self.0.contains(&Part::Group);
        let groups: Vec<Option<&str>> = if uses_group {
            ctx.groups.iter().map(|g| Some(g.as_str())).collect()
        } else {
            vec![None]
        };
        groups
            .into_iter()
            .filter_map(|g| self.render(|p| value(p, g)))
            .collect()
    }

    fn render<V: AsRef<str>>(&self, mut value: impl FnMut(&Part) -> Option<V>) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                p => out.push_str(value(p)?.as_ref()),
            }
        }
        Some(out)
    }
}

/// A substituted value must stay inside one level and not be a wildcard.
fn safe_value(v: &str) -> bool {
    !v.is_empty() && !v.contains(['/', '+', '#', '\0'])
}

/// Read every policy (at open and after a change).
pub(crate) fn load_all(db: &redb::Database) -> Result<Vec<Policy>, FleetError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(POLICIES)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.push(from_json(v.value(), k.value())?);
    }
    Ok(out)
}

impl Fleet {
    /// Create or replace a policy. Every cached ACL is recompiled on next use and
    /// [`FleetEvent::PoliciesChanged`] tells live sessions to refresh theirs.
    pub fn put_policy(&self, actor: &Actor, policy: &Policy) -> Result<(), FleetError> {
        policy.validate()?;
        self.write(actor, |tx| {
            let old = tx
                .txn
                .open_table(POLICIES)?
                .insert(policy.name.as_str(), to_json(policy)?.as_slice())?
                .is_some();
            tx.policies_changed();
            tx.emit(FleetEvent::PoliciesChanged);
            tx.audit(
                if old {
                    "policy.replace"
                } else {
                    "policy.create"
                },
                &policy.name,
                serde_json::to_value(policy).unwrap_or_default(),
            )
        })
    }

    /// Delete a policy.
    pub fn delete_policy(&self, actor: &Actor, name: &str) -> Result<(), FleetError> {
        self.write(actor, |tx| {
            if tx.txn.open_table(POLICIES)?.remove(name)?.is_none() {
                return Err(FleetError::not_found("policy", name));
            }
            tx.policies_changed();
            tx.emit(FleetEvent::PoliciesChanged);
            tx.audit("policy.delete", name, serde_json::Value::Null)
        })
    }

    /// The policy with this name.
    pub fn get_policy(&self, name: &str) -> Option<Policy> {
        read(&self.inner().policies)
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }

    /// Every policy, by name.
    pub fn list_policies(&self) -> Vec<Policy> {
        read(&self.inner().policies).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_core::DeviceId;
    use std::collections::{BTreeMap, BTreeSet};

    fn ctx() -> DeviceContext {
        DeviceContext {
            id: DeviceId::new("d1").expect("id"),
            device_type: Some("meter".into()),
            groups: BTreeSet::from(["a".into(), "b".into()]),
            tags: BTreeMap::from([
                ("site".into(), "berlin".into()),
                ("evil".into(), "x/#".into()),
                ("plus".into(), "+".into()),
            ]),
        }
    }

    fn expand(t: &str) -> Vec<String> {
        Template::parse(t).expect("valid").expand(&ctx())
    }

    #[test]
    fn templates_expand() {
        assert_eq!(expand("devices/${device_id}/#"), ["devices/d1/#"]);
        assert_eq!(
            expand("groups/${group}/cmd"),
            ["groups/a/cmd", "groups/b/cmd"]
        );
        assert_eq!(expand("t/${type}/${group}"), ["t/meter/a", "t/meter/b"]);
        assert_eq!(expand("sites/${tag:site}/+"), ["sites/berlin/+"]);
        assert_eq!(expand("pre-${device_id}-post/x"), ["pre-d1-post/x"]);
        assert_eq!(expand("$SYS/broker/#"), ["$SYS/broker/#"]);
        assert!(expand("sites/${tag:missing}/x").is_empty());
        assert!(
            expand("sites/${tag:evil}").is_empty(),
            "unsafe values never widen"
        );
        assert!(expand("sites/${tag:plus}/x").is_empty());
        let mut c = ctx();
        c.groups.clear();
        c.device_type = None;
        let t = Template::parse("g/${group}").expect("valid");
        assert!(t.expand(&c).is_empty());
        assert!(
            Template::parse("t/${type}")
                .expect("valid")
                .expand(&c)
                .is_empty()
        );
    }

    #[test]
    fn bad_templates() {
        assert!(Template::parse("a/${nope}").is_err());
        assert!(Template::parse("a/${group").is_err());
        assert!(Template::parse("a/#/b").is_err());
        assert!(Template::parse("a/x${group}+").is_err());
        assert!(Template::parse("").is_err());
        assert!(Template::parse("a/${tag:bad key}").is_err());
    }

    #[test]
    fn attach_serde() {
        let p: Policy = serde_json::from_str(
            r#"{"name":"p","attach":["all","group:g","type:t"],
                "allow":[{"access":"both","topics":["x/${device_id}"]}]}"#,
        )
        .expect("json");
        assert_eq!(
            p.attach,
            [
                Attach::All,
                Attach::Group("g".into()),
                Attach::Type("t".into())
            ]
        );
        assert!(p.validate().is_ok());
        assert!(serde_json::from_str::<Attach>(r#""group:a/b""#).is_err());
        let mut bad = p.clone();
        bad.attach = vec![Attach::Group("a/b".into())];
        assert!(
            bad.validate().is_err(),
            "programmatic attachments are checked too"
        );
        assert!(serde_json::from_str::<Attach>(r#""bogus""#).is_err());
        let text = serde_json::to_string(&p).expect("ser");
        assert!(text.contains("\"group:g\""));
    }
}
