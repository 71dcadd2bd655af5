//! Authorization, pure: a device's policies compiled once into a [`CompiledAcl`], then
//! [`CompiledAcl::authorize`] per publish or subscribe.
//!
//! Semantics:
//!
//! - Built in for every device: allow publish and subscribe on `devices/{its id}/#`.
//! - Operator [`Policy`]s that apply to the device add allow rules and deny rules.
//! - **Publish** to a topic: denied if any deny filter matches it, else allowed if any allow
//!   filter matches it, else denied.
//! - **Subscribe** with a filter: allowed only if *every* topic the filter can match is
//!   allowed (the filter is covered by the union of the allow filters; `#` and
//!   `devices/+/telemetry` are therefore refused to an ordinary device) and *no* topic it can
//!   match is denied (it overlaps no deny filter). A shared subscription
//!   `$share/{group}/{filter}` is judged by its `{filter}`.
//! - Anything malformed is denied.
//!
//! A publish check does not allocate: the topic is validated and matched level by level
//! against pre-split filters.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ferrite_core::DeviceId;
use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::filter::{Filter, covered_by, overlaps, valid_topic_name};
use crate::policy::{Access, Policy, Template};

/// What a device wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe with a topic filter.
    Subscribe,
}

/// The verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse.
    Deny,
}

impl Decision {
    /// Whether this is [`Decision::Allow`].
    pub fn is_allowed(self) -> bool {
        self == Self::Allow
    }
}

/// What policies are evaluated against: the device's identity and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceContext {
    /// The device.
    pub id: DeviceId,
    /// Its type.
    pub device_type: Option<String>,
    /// Its groups.
    pub groups: BTreeSet<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

impl DeviceContext {
    /// A context with only an id (no type, groups or tags).
    pub fn bare(id: DeviceId) -> Self {
        Self {
            id,
            device_type: None,
            groups: BTreeSet::new(),
            tags: BTreeMap::new(),
        }
    }
}

impl From<&Device> for DeviceContext {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            device_type: d.device_type.clone(),
            groups: d.groups.clone(),
            tags: d.tags.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    filter: Filter,
    text: Box<str>,
}

/// One device's rules, expanded and parsed. Immutable; shared as `Arc` by sessions.
#[derive(Clone, Debug, Default)]
pub struct CompiledAcl {
    allow_publish: Vec<Entry>,
    allow_subscribe: Vec<Entry>,
    deny_publish: Vec<Entry>,
    deny_subscribe: Vec<Entry>,
}

/// Which list of a [`CompiledAcl`] a rule is in, for [`CompiledAcl::rules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// An allow rule.
    Allow,
    /// A deny rule.
    Deny,
}

impl CompiledAcl {
    /// Compile the built-in rule and every policy in `policies` that applies to `ctx`.
    pub fn compile(ctx: &DeviceContext, policies: &[Policy]) -> Self {
        let mut acl = Self::default();
        let mut seen = HashSet::new();
        let own = format!("devices/{}/#", ctx.id);
        for list in [Access::Publish, Access::Subscribe] {
            acl.push(Effect::Allow, list, &own, &mut seen);
        }
        for p in policies.iter().filter(|p| p.applies_to(ctx)) {
            for (effect, rules) in [(Effect::Allow, &p.allow), (Effect::Deny, &p.deny)] {
                for rule in rules {
                    for t in &rule.topics {
                        // Policies are validated when stored; an invalid one grants nothing.
                        let Ok(template) = Template::parse(t) else {
                            continue;
                        };
                        for filter in template.expand(ctx) {
                            acl.push(effect, rule.access, &filter, &mut seen);
                        }
                    }
                }
            }
        }
        acl
    }

    fn push(
        &mut self,
        effect: Effect,
        access: Access,
        text: &str,
        seen: &mut HashSet<(Effect, bool, String)>,
    ) {
        let Ok(filter) = Filter::parse(text) else {
            return;
        };
        let targets: &[bool] = match access {
            Access::Publish => &[true],
            Access::Subscribe => &[false],
            Access::Both => &[true, false],
        };
        for &publish in targets {
            if !seen.insert((effect, publish, text.to_owned())) {
                continue;
            }
            let list = match (effect, publish) {
                (Effect::Allow, true) => &mut self.allow_publish,
                (Effect::Allow, false) => &mut self.allow_subscribe,
                (Effect::Deny, true) => &mut self.deny_publish,
                (Effect::Deny, false) => &mut self.deny_subscribe,
            };
            list.push(Entry {
                filter: filter.clone(),
                text: text.into(),
            });
        }
    }

    /// Decide whether the device may publish to `topic` or subscribe with the filter `topic`.
    pub fn authorize(&self, action: Action, topic: &str) -> Decision {
        let allowed = match action {
            Action::Publish => self.may_publish(topic),
            Action::Subscribe => self.may_subscribe(topic),
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    fn may_publish(&self, topic: &str) -> bool {
        valid_topic_name(topic)
            && !self.deny_publish.iter().any(|e| e.filter.matches(topic))
            && self.allow_publish.iter().any(|e| e.filter.matches(topic))
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, f)) if !group.is_empty() && !group.contains(['+', '#']) => f,
                _ => return false,
            },
            None => filter,
        };
        let Ok(req) = Filter::parse(filter) else {
            return false;
        };
        !self
            .deny_subscribe
            .iter()
            .any(|e| overlaps(req.levels(), e.filter.levels()))
            && covered_by(req.levels(), self.allow_subscribe.iter().map(|e| &e.filter))
    }

    /// The compiled rules as (effect, action, filter), for display and debugging.
    pub fn rules(&self) -> impl Iterator<Item = (Effect, Action, &str)> {
        self.allow_publish
            .iter()
            .map(|e| (Effect::Allow, Action::Publish, &*e.text))
            .chain(
                self.allow_subscribe
                    .iter()
                    .map(|e| (Effect::Allow, Action::Subscribe, &*e.text)),
            )
            .chain(
                self.deny_publish
                    .iter()
                    .map(|e| (Effect::Deny, Action::Publish, &*e.text)),
            )
            .chain(
                self.deny_subscribe
                    .iter()
                    .map(|e| (Effect::Deny, Action::Subscribe, &*e.text)),
            )
    }
}

/// Compile and decide in one go (tests, one-off checks). Sessions should keep a
/// [`CompiledAcl`] (see [`crate::Fleet::acl`]) instead.
pub fn authorize(
    ctx: &DeviceContext,
    policies: &[Policy],
    action: Action,
    topic_or_filter: &str,
) -> Decision {
    CompiledAcl::compile(ctx, policies).authorize(action, topic_or_filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Attach, Rule};

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).expect("id")
    }

    #[test]
    fn default_namespace_only() {
        let acl = CompiledAcl::compile(&DeviceContext::bare(id("d1")), &[]);
        let ok = |a, t| acl.authorize(a, t).is_allowed();
        assert!(ok(Action::Publish, "devices/d1/telemetry"));
        assert!(ok(Action::Publish, "devices/d1"));
        assert!(!ok(Action::Publish, "devices/d2/telemetry"));
        assert!(
            !ok(Action::Publish, "devices/d1/+"),
            "wildcards are not topic names"
        );
        assert!(!ok(Action::Publish, ""));
        assert!(ok(Action::Subscribe, "devices/d1/#"));
        assert!(ok(Action::Subscribe, "devices/d1/commands/+"));
        assert!(!ok(Action::Subscribe, "devices/+/telemetry"));
        assert!(!ok(Action::Subscribe, "#"));
        assert!(!ok(Action::Subscribe, "devices/#"));
        assert!(!ok(Action::Subscribe, "devices/d1/#/x"), "malformed");
        assert!(ok(Action::Subscribe, "$share/g/devices/d1/#"));
        assert!(!ok(Action::Subscribe, "$share/g/#"));
        assert!(!ok(Action::Subscribe, "$share//devices/d1/#"));
        assert!(!ok(Action::Subscribe, "$share/g"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = Policy {
            name: "p".into(),
            description: String::new(),
            attach: vec![Attach::All],
            allow: vec![Rule {
                access: Access::Subscribe,
                topics: vec!["fleet/#".into()],
            }],
            deny: vec![Rule {
                access: Access::Both,
                topics: vec!["devices/${device_id}/secret/#".into(), "fleet/admin".into()],
            }],
        };
        let acl = CompiledAcl::compile(&DeviceContext::bare(id("d1")), &[p]);
        let ok = |a, t| acl.authorize(a, t).is_allowed();
        assert!(!ok(Action::Publish, "devices/d1/secret/x"));
        assert!(ok(Action::Publish, "devices/d1/other"));
        assert!(
            !ok(Action::Subscribe, "devices/d1/#"),
            "overlaps the denied subtree"
        );
        assert!(ok(Action::Subscribe, "devices/d1/telemetry"));
        assert!(ok(Action::Subscribe, "fleet/news"));
        assert!(!ok(Action::Subscribe, "fleet/#"));
        assert!(!ok(Action::Subscribe, "fleet/+"));
        assert!(
            !ok(Action::Publish, "fleet/news"),
            "allow was subscribe only"
        );
        assert_eq!(acl.rules().count(), 7);
    }
}
